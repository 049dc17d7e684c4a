"""`imagebert extract`: raw images -> region-feature store (see docs/extraction.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagebert.config_utils import ConfigError, add_config_file_arguments, defer_config_arguments, meta
from imagebert.runtime.threads import threads_field

if TYPE_CHECKING:
    from imagebert.extraction.extract import ExtractionConfig


@dataclass
class ExtractSettings:
    """`imagebert extract`: the inputs and the store, plus the feature settings (their flags have no prefix)."""

    images: str = field(metadata=meta("a folder of images, or a file listing image paths", positional=True,
                                      metavar="IMAGES_DIR_OR_LIST", path=True))  # fmt: skip
    out: str = field(metadata=meta("feature store to create (a folder; existing: --resume/--overwrite)"))
    boxes: str | None = field(default=None, metadata=meta(
        "COCO-style JSON with the boxes and categories per image", path=True))  # fmt: skip
    detector: str | None = field(
        default=None, metadata=meta("torchvision-frcnn, or a plug-in package.module:factory")
    )
    detector_checkpoint: str | None = field(
        default=None, metadata=meta("checkpoint for --detector", path=True)
    )
    image_root: str | None = field(default=None, metadata=meta(
        "folder the list file / box file paths are relative to", path=True))  # fmt: skip
    allow_empty: bool = field(default=False, metadata=meta("exit 0 even when no image could be extracted"))
    extraction: ExtractionConfig = field(default_factory=lambda: _settings_class() and ExtractionConfig(),
                                         metadata=meta(flat=True))  # fmt: skip
    threads: str = threads_field()

    def validate(self) -> None:
        from imagebert.runtime.threads import parse_threads

        x = self.extraction
        if x.grid is not None and x.grid < 1:
            raise ConfigError("--grid must be >= 1")
        if sum(v is not None for v in (self.boxes, x.grid, self.detector)) > 1:
            raise ConfigError("give at most one of --boxes, --grid and --detector")
        for flag, value in (("--max-pixels", x.max_pixels), ("--batch-size", x.batch_size),
                            ("--workers", x.num_workers), ("--pool-size", x.pool_size),
                            ("--sampling-ratio", x.sampling_ratio)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if x.image_size % 32 or x.image_size < 32:
            raise ConfigError("--image-size must be a positive multiple of 32")
        if self.detector_checkpoint and not self.detector:
            raise ConfigError("--detector-checkpoint needs --detector")
        if x.id_mode not in ID_MODES:
            raise ConfigError(f"--id-mode must be one of {', '.join(ID_MODES)}, got {x.id_mode!r}")
        if x.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype must be float16 or float32, got {x.dtype!r}")
        parse_threads(self.threads)


ID_MODES = ("stem", "path", "coco-id")


def _settings_class() -> type:
    """ExtractSettings with its ExtractionConfig type importable (torch loads only when `extract` runs)."""
    global ExtractionConfig
    from imagebert.extraction.extract import ExtractionConfig

    return ExtractSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract region features from images into a feature store",
        description="Pool RoIAlign region features from a pre-trained CNN into a region-feature store. "
        "Resumable with --resume: images already in the store are skipped. Settings: flags, --config FILE "
        "(keys as in ExtractSettings; feature settings under `extraction:`) and --set.",
    )
    add_config_file_arguments(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an existing store at --out")
    again.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    defer_config_arguments(p, _settings_class, aliases={"extraction.num_workers": ["--workers"],
                                                      "extraction.weights_path": ["--weights"]})  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.config_utils import load_command_config
    from imagebert.extraction.boxes import load_detector
    from imagebert.extraction.extract import extract
    from imagebert.rundir import open_run_dir
    from imagebert.runtime.threads import apply_threads

    s = load_command_config(_settings_class(), args)
    cfg = s.extraction
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError(f"--device {cfg.device}: CUDA is not available in this torch build")
    apply_threads(s.threads)
    lock = open_run_dir(s.out, resume=args.resume, overwrite=args.overwrite, what="feature store")
    if lock is not None:
        lock.release()  # the store writer takes its own lock
    detector = load_detector(s.detector, s.detector_checkpoint, cfg.device) if s.detector else None
    report = extract(s.images, s.out, cfg, boxes=s.boxes, detector=detector, image_root=s.image_root)
    print(report.summary())
    for name, reason in report.rejects[:20]:
        print(f"  rejected {name}: {reason}", file=sys.stderr)
    if report.rejected > 20:
        print(f"  ... and {report.rejected - 20} more", file=sys.stderr)
    if report.total == 0 and not s.allow_empty:
        raise CliError(f"no images found in {s.images} (pass --allow-empty to accept an empty store)")
    if report.extracted + report.skipped_existing == 0 and report.rejected and not s.allow_empty:
        raise CliError(f"every one of the {report.rejected} images was rejected; see {report.rejects_path}")
    return 0
