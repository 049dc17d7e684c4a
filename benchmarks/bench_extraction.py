"""Region-feature extraction speed: `imagebert extract` images/s against peers measured in the same run.

    .venv/bin/python benchmarks/bench_extraction.py --images 32 --repeats 3 --workdir /tmp/bench_extraction

Phases (EfficientNet-Lite0, letterbox 512, batch 8, on the chosen device), interleaved round-robin `--repeats`
times so that changing load from other processes hits every phase alike:
  extract    the whole pipeline (decode PNG, letterbox, backbone, RoIAlign, fp16 store write), fp32 and bf16,
             with the demo's true boxes (2-4 per image) and with a 10x10 grid + whole image (101 boxes)
  backbone   the plain backbone forward on ready tensors (the floor the pipeline can reach), fp32 and bf16,
             channels_last input as the pipeline feeds it, and fp32 with a plain NCHW input
  pooling    100 boxes per image on a [8, 1280, 16, 16] map: our separable `roi_align_mean`, the grid_sample
             `roi_align` + mean, and a naive per-box loop (crop the cells, adaptive average pool), the usual
             plain-torch stand-in for RoI pooling when torchvision is missing
Reported per phase: images/s from the best repeat (wall clock), and CPU-seconds per image of this process
(median; less sensitive to other load on a shared machine). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from imagebert.demo.corpus import build_demo_corpus
from imagebert.extraction.backbone import load_backbone
from imagebert.extraction.extract import ExtractionConfig, extract
from imagebert.extraction.roi_align import roi_align, roi_align_mean


def _naive_pool(fmap: torch.Tensor, boxes: list[torch.Tensor], scale: float) -> torch.Tensor:
    out = []
    _, _, h, w = fmap.shape
    for b, bx in enumerate(boxes):
        for x1, y1, x2, y2 in (bx * scale).tolist():
            c0, r0 = min(int(x1), w - 1), min(int(y1), h - 1)
            c1, r1 = max(c0 + 1, min(int(round(x2)), w)), max(r0 + 1, min(int(round(y2)), h))
            out.append(F.adaptive_avg_pool2d(fmap[b, :, r0:r1, c0:c1], 4).mean(dim=(1, 2)))
    return torch.stack(out)


def _measure(fn: Callable[[], int]) -> tuple[float, float, int]:
    """Run once: (wall seconds, process CPU seconds, images processed)."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - w0, time.process_time() - c0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default="/tmp/bench_extraction")
    args = ap.parse_args()

    work = Path(args.workdir)
    corpus = build_demo_corpus(
        work / "corpus", num_train=args.images, num_val=0, num_test=0, seed=0, image_size=384
    )
    device = torch.device(args.device)
    net = load_backbone("efficientnet-lite0", device)

    def extract_phase(tag: str, bf16: bool, grid: int | None) -> Callable[[], int]:
        def fn() -> int:
            out = work / f"store_{tag}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = ExtractionConfig(image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                                   bf16=bf16, grid=grid, progress=False)  # fmt: skip
            rep = extract(
                corpus.images_dir, out, cfg, boxes=None if grid else corpus.boxes_json, backbone=net
            )
            assert rep.extracted == args.images and rep.rejected == 0, rep.summary()
            return rep.extracted

        return fn

    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 255
    x_cl = x.contiguous(memory_format=torch.channels_last)  # the layout the pipeline feeds

    def forward_phase(bf16: bool, channels_last: bool = True) -> Callable[[], int]:
        def fn() -> int:
            for _ in range(max(1, args.images // args.batch_size)):
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    net(x_cl if channels_last else x)
            return max(1, args.images // args.batch_size) * args.batch_size

        return fn

    side = args.image_size // 32
    fmap = torch.randn(8, 1280, side, side, device=device)
    g = torch.Generator().manual_seed(0)
    boxes = []
    for _ in range(8):
        xy = torch.rand(100, 2, generator=g) * args.image_size * 0.8
        wh = torch.rand(100, 2, generator=g) * args.image_size * 0.5 + 8
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=args.image_size)], 1).to(device))

    def pool_phase(fn_pool: Callable[[], torch.Tensor], reps: int) -> Callable[[], int]:
        def fn() -> int:
            with torch.inference_mode():
                for _ in range(reps):
                    fn_pool()
            return 8 * reps

        return fn

    phases: list[tuple[str, Callable[[], int]]] = [
        ("extract, fp32, true boxes (2-4 per image)", extract_phase("fp32", False, None)),
        ("extract, bf16, true boxes (2-4 per image)", extract_phase("bf16", True, None)),
        ("extract, fp32, grid 10x10 + whole (101 boxes)", extract_phase("grid", False, 10)),
        ("peer: backbone forward only, fp32", forward_phase(False)),
        ("peer: backbone forward only, bf16", forward_phase(True)),
        ("peer: backbone forward only, fp32, NCHW input", forward_phase(False, channels_last=False)),
        ("pooling 100 boxes: roi_align_mean (ours, separable)",
         pool_phase(lambda: roi_align_mean(fmap, boxes, 4, 1 / 32, 2), 50)),
        ("pooling 100 boxes: roi_align grid_sample + mean",
         pool_phase(lambda: roi_align(fmap, boxes, 4, 1 / 32, 2).mean(dim=(2, 3)), 2)),
        ("pooling 100 boxes, peer: naive per-box loop", pool_phase(lambda: _naive_pool(fmap, boxes, 1 / 32), 2)),
    ]  # fmt: skip

    for _, fn in phases:  # warm-up: allocator, oneDNN kernels, page cache
        if fn.__qualname__.startswith("main.<locals>.extract_phase"):
            continue
        fn()
    extract_phase("warm", False, None)()

    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in phases}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, fn in phases:
            results[name].append(_measure(fn))
    load_after = os.getloadavg()[0]

    rows = []
    for name, runs in results.items():
        best = max(n / w for w, _, n in runs)
        cpu = statistics.median(c / n for _, c, n in runs)
        rows.append((name, best, cpu * 1000, [round(n / w, 2) for w, _, n in runs]))
    base = {r[0]: r for r in rows}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")  # fmt: skip
    print(f"command: .venv/bin/python benchmarks/bench_extraction.py --images {args.images} --repeats "
          f"{args.repeats} --image-size {args.image_size} --batch-size {args.batch_size} --device {args.device}\n")  # fmt: skip
    print("| phase | images/s (best) | CPU ms / image (median) | images/s per repeat |\n|---|---:|---:|---|")
    for name, best, cpu_ms, each in rows:
        print(f"| {name} | {best:.2f} | {cpu_ms:.1f} | {each} |")
    fwd = base["peer: backbone forward only, fp32"]
    ext = base["extract, fp32, true boxes (2-4 per image)"]
    ours = base["pooling 100 boxes: roi_align_mean (ours, separable)"]
    naive = base["pooling 100 boxes, peer: naive per-box loop"]
    gs = base["pooling 100 boxes: roi_align grid_sample + mean"]
    print(f"\nextract fp32 / backbone-only fp32 (images/s): {ext[1] / fwd[1]:.2f}")
    print(
        f"bf16 / fp32 extract (images/s): {base['extract, bf16, true boxes (2-4 per image)'][1] / ext[1]:.2f}"
    )
    print(f"roi_align_mean vs naive loop (CPU time): {naive[2] / ours[2]:.0f}x faster; "
          f"vs grid_sample roi_align: {gs[2] / ours[2]:.0f}x faster")  # fmt: skip
    (work / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
