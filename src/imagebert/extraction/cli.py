"""`imagebert extract`: raw images -> region-feature store (see docs/extraction.md)."""

from __future__ import annotations

import argparse
import sys

from imagebert.extraction.images import DEFAULT_MAX_PIXELS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract region features from images into a feature store",
        description="Pool RoIAlign region features from a pre-trained CNN into a region-feature store. "
        "Resumable with --resume: images already in the store are skipped.",
    )
    p.add_argument(
        "images", metavar="IMAGES_DIR_OR_LIST", help="a folder of images, or a file listing image paths"
    )
    p.add_argument(
        "--out", required=True, help="feature store to create (a folder; existing: --resume/--overwrite)"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an existing store at --out")
    again.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    p.add_argument("--allow-empty", action="store_true", help="exit 0 even when no image could be extracted")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--boxes", metavar="FILE", help="COCO-style JSON with the boxes and categories per image"
    )
    src.add_argument("--grid", type=int, metavar="N", help="an N x N grid plus the whole image (default: 4)")
    src.add_argument(
        "--detector", metavar="NAME", help="torchvision-frcnn, or a plug-in package.module:factory"
    )
    p.add_argument("--detector-checkpoint", metavar="FILE", help="checkpoint for --detector")
    p.add_argument("--image-root", help="folder the list file / box file paths are relative to")
    p.add_argument(
        "--backbone", default="efficientnet-lite0", help="CNN backbone (default: efficientnet-lite0)"
    )
    p.add_argument("--weights", help="backbone weights file (default: the one the backbone package ships)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512, help="letterbox side in pixels, multiple of 32")
    p.add_argument("--pool-size", type=int, default=4, help="RoIAlign bins per side (feature = their mean)")
    p.add_argument("--sampling-ratio", type=int, default=2, help="bilinear samples per bin side")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="run the backbone under bfloat16 autocast")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images (bombs)")
    p.add_argument("--id-mode", choices=("stem", "path", "coco-id"), default="stem",
                   help="store id: file name without extension, relative path with / -> __, or the box file id")  # fmt: skip
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="store feature dtype")
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.errors import InputError
    from imagebert.extraction.boxes import load_detector
    from imagebert.extraction.extract import ExtractionConfig, extract
    from imagebert.rundir import open_run_dir

    if args.grid is not None and args.grid < 1:
        raise CliError("--grid must be >= 1")
    for flag, value in (("--max-pixels", args.max_pixels), ("--batch-size", args.batch_size),
                        ("--workers", args.workers), ("--pool-size", args.pool_size),
                        ("--sampling-ratio", args.sampling_ratio)):  # fmt: skip
        if value < 1:
            raise CliError(f"{flag} must be >= 1, got {value}")
    if args.image_size % 32 or args.image_size < 32:
        raise CliError("--image-size must be a positive multiple of 32")
    if args.detector_checkpoint and not args.detector:
        raise CliError("--detector-checkpoint needs --detector")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError(f"--device {args.device}: CUDA is not available in this torch build")
    cfg = ExtractionConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        sampling_ratio=args.sampling_ratio,
        grid=args.grid,
        device=args.device,
        bf16=args.bf16,
        max_pixels=args.max_pixels,
        id_mode=args.id_mode,
        dtype=args.dtype,
        num_workers=args.workers,
        progress=not args.no_progress,
        weights_path=args.weights,
    )
    try:
        lock = open_run_dir(args.out, resume=args.resume, overwrite=args.overwrite, what="feature store")
        if lock is not None:
            lock.release()  # the store writer takes its own lock
        detector = (
            load_detector(args.detector, args.detector_checkpoint, args.device) if args.detector else None
        )
        report = extract(
            args.images, args.out, cfg, boxes=args.boxes, detector=detector, image_root=args.image_root
        )
    except (InputError, ValueError, ImportError, FileNotFoundError, TypeError) as exc:
        raise CliError(str(exc)) from exc
    print(report.summary())
    for name, reason in report.rejects[:20]:
        print(f"  rejected {name}: {reason}", file=sys.stderr)
    if report.rejected > 20:
        print(f"  ... and {report.rejected - 20} more", file=sys.stderr)
    if report.total == 0 and not args.allow_empty:
        raise CliError(f"no images found in {args.images} (pass --allow-empty to accept an empty store)")
    if report.extracted + report.skipped_existing == 0 and report.rejected and not args.allow_empty:
        raise CliError(f"every one of the {report.rejected} images was rejected; see {report.rejects_path}")
    return 0
