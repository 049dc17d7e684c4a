"""Regenerate docs/first-hour.md: the newcomer's path from "a BUTD TSV and a caption file" to a fine-tuned
checkpoint, its recall table and a search query, each step run here as the shell command the guide shows.

    .venv/bin/python -m experiments.first_hour [--workdir /tmp/first_hour] [--keep]

Every command is run with `bash -c` in the work folder with .venv/bin first on PATH (as after
`source .venv/bin/activate`), timed, and written into the guide with the lines of its output worth seeing.
A failing step stops the run and no guide is written, so the guide only ever shows commands that worked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "first-hour.md"
PORT = 8737


@dataclass
class Step:
    title: str
    text: str
    command: str
    keep_lines: int = 6  # last lines of output shown in the guide


STAND_IN = (
    'python -c "from imagebert.demo.corpus import build_demo_corpus; '
    "from imagebert.demo.detector_features import write_detector_tsv; "
    "c = build_demo_corpus('mydata', 1000, 100, 100); "
    "write_detector_tsv(c.boxes_json, 'mydata/features.tsv')\""
)

DATASET_YAML = """cat > mydata/dataset.yaml <<'EOF'
name: mydata
feature_store: store              # paths in a YAML file are relative to the file's folder
captions:
  - path: dataset_demo.json       # Karpathy layout: images[].{filename, split, sentences[].raw}
    format: karpathy
    dataset: karpathy             # a Karpathy-layout file of your own (not flickr30k/coco)
    image_id: stem                # the TSV's img_id is the file name without its extension
missing_images: error
EOF"""

STEPS = [
    Step(
        "0. The data you bring (here: a stand-in)",
        "You have a bottom-up-attention / LXMERT TSV (`img_id, img_h, img_w, objects_id, objects_conf, attrs_id, "
        "attrs_conf, num_boxes, boxes, features`, 2048-d features) and a Karpathy-style caption JSON. For this "
        "guide a stand-in of the same layout is written from the demo's scenes: 1,200 images with 2048-d "
        "non-negative features (`mydata/features.tsv`) and `mydata/dataset_demo.json`. Skip this step with your "
        "own files.",
        STAND_IN,
        keep_lines=0,
    ),
    Step(
        "1. Import the features into a store",
        "One pass over the TSV into an LMDB store with a checksum per record; widths and box counts are read "
        "from the file. `imagebert features verify` re-checks a store later.",
        "imagebert features import --format lxmert-tsv --out mydata/store mydata/features.tsv",
    ),
    Step(
        "2. Describe the dataset",
        "A dataset YAML ties the store to the captions. `dataset: karpathy` is the generic Karpathy layout; "
        "`flickr30k`, `flickr8k` and `coco` are the same layout with their known split names.",
        DATASET_YAML,
        keep_lines=0,
    ),
    Step(
        "3. Pre-train (MLM, MOC, MRFR, ITM and ITC)",
        "The shipped CPU recipe (`imagebert config show pretrain/demo_cpu`), starting from the shipped MiniLM "
        "text encoder. The feature width (2048) and the class count are read from the store; threads are "
        "chosen from the cores this process may use. Watch `itm_acc` leave 0.5 in the progress bar.",
        "imagebert pretrain pretrain/demo_cpu --out runs/pretrain "
        "--set 'stages.0.datasets=[mydata/dataset.yaml]'",
    ),
    Step(
        "4. Fine-tune for retrieval",
        "BCE over each positive and its sampled negatives both ways (paper section 4.4), validated on every "
        "pair of a fixed set of validation images; the best checkpoint is kept in `runs/finetune/best`.",
        "imagebert finetune finetune/demo_cpu --out runs/finetune "
        "--set dataset=mydata/dataset.yaml --set init_checkpoint=runs/pretrain/1-demo/final",
    ),
    Step(
        "5. Evaluate: the recall table",
        "Every caption against every test image with the cross-encoder (100 images x 500 captions here), the "
        "paper's R@1/5/10 both ways; `--mode fast` ranks with the contrastive first stage and re-scores the top "
        "k only.",
        "imagebert evaluate --checkpoint runs/finetune/best --dataset mydata/dataset.yaml --split test "
        "--protocol flickr1k --out runs/eval && cat runs/eval/results.md",
        keep_lines=14,
    ),
    Step(
        "6. Build a search index",
        "Contrastive embeddings of the test images and captions, with thumbnails for the page.",
        "imagebert index build runs/finetune/best --dataset mydata/dataset.yaml --split test "
        "--images mydata/images --out runs/index",
    ),
    Step(
        "7. Serve it and search",
        f"The HTTP service (a page at http://127.0.0.1:{PORT}/ and a JSON API); the query below asks for the "
        "images that best match a caption, re-ranked by the cross-encoder.",
        f"(imagebert serve runs/index --checkpoint runs/finetune/best --port {PORT} > serve.log 2>&1 &) && "
        f"for i in $(seq 120); do curl -sf http://127.0.0.1:{PORT}/health > /dev/null && break; sleep 1; done && "
        f"curl -s -X POST http://127.0.0.1:{PORT}/search/images -H 'content-type: application/json' "
        '-d \'{"query": "a red circle to the left of a blue square", "top_k": 3}\'',
        keep_lines=3,
    ),
]


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} CPU, {cores} cores{mem}, no GPU (1-min load average at the start: {load:.1f})"
    )


def _stop_server() -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2):
            pass
    except OSError:
        return
    subprocess.run(
        ["pkill", "-f", f"imagebert serve runs/index --checkpoint runs/finetune/best --port {PORT}"],
        check=False,
    )


def _shorten(output: str, keep: int, workdir: Path) -> str:
    lines = [ln.rstrip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
    lines = [ln for ln in lines if "%|" not in ln]  # progress-bar frames
    text = "\n".join(lines[-keep:]) if keep else ""
    return text.replace(str(workdir), ".")


def run(workdir: Path) -> list[tuple[Step, float, str]]:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="0")
    done = []
    try:
        for step in STEPS:
            print(f"[first-hour] {step.title}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(
                ["bash", "-c", step.command], cwd=workdir, env=env, capture_output=True, text=True
            )
            seconds = time.perf_counter() - start
            output = proc.stdout + proc.stderr
            if proc.returncode:
                sys.stderr.write(output[-4000:])
                raise SystemExit(f"step {step.title!r} failed with exit code {proc.returncode}")
            done.append((step, seconds, _shorten(output, step.keep_lines, workdir)))
            print(f"[first-hour]   {seconds:.0f} s", flush=True)
    finally:
        _stop_server()
    return done


def write_guide(results: list[tuple[Step, float, str]], machine: str) -> None:
    total = sum(s for _, s, _ in results)
    lines = [
        "# Your first hour with imagebert",
        "",
        'From "I have a bottom-up-attention TSV and a caption file" to a fine-tuned checkpoint, its recall table '
        "and a search query. Every command below was run, in this order, in an empty folder, by "
        "`python -m experiments.first_hour` (which also wrote this page); the times are what each took there.",
        "",
        f"Machine: {machine}. Total: {total / 60:.1f} min.",
        "",
        "Set-up, once, from a clone: `make test` (or `make demo`) creates `.venv`; then "
        "`source .venv/bin/activate` and work in any folder. `pretrain/demo_cpu` and `finetune/demo_cpu` are "
        "configs shipped inside the package (`imagebert config list`; copy one with `imagebert config show NAME`).",
        "",
    ]
    for step, seconds, output in results:
        lines += [
            f"## {step.title}",
            "",
            step.text,
            "",
            "```bash",
            step.command,
            "```",
            "",
            f"Took {seconds:.0f} s.",
        ]
        if output:
            lines += ["", "```text", output, "```"]
        lines.append("")
    lines += [
        "## Where to go next",
        "",
        "- The full recipes and their settings: docs/training.md, docs/retrieval.md, docs/configuration.md.",
        "- Your own images instead of a TSV: `imagebert extract` (docs/extraction.md).",
        "- Several GPUs: the same `pretrain` and `finetune` commands under `torchrun --nproc_per_node N -m imagebert`.",
        "",
    ]
    GUIDE.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imagebert_first_hour"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    machine = _machine()
    results = run(args.workdir)
    write_guide(results, machine)
    print(json.dumps({"guide": str(GUIDE), "seconds": {s.title: round(t) for s, t, _ in results}}, indent=1))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
