#!/usr/bin/env bash
# One command, under 5 minutes on a CUDA card: BERT-base pre-training step and retrieval scoring in bf16,
# samples/s, pairs/s, MFU against the card's peak, exhaustive Flickr30k 1k / COCO 5k projections.
# Writes benchmarks/results/gpu.md; then `python -m benchmarks.collect_results` puts it in BENCHMARKS.md.
#   bash benchmarks/gpu_check.sh                 # extra arguments go to benchmarks/gpu_check.py
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu.md   # smoke mode, no GPU needed
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 300 "$PY" -m benchmarks.gpu_check "$@"
