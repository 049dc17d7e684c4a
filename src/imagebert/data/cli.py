"""`imagebert features import|info|verify` and `imagebert datasets check`: bring region features and captions in."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from imagebert.config_utils import ConfigError, add_config_arguments, add_config_file_arguments, meta
from imagebert.runtime.threads import threads_field

FORMATS = ("butd-tsv", "lxmert-tsv", "npz-butd", "npz-uniter", "hdf5")


@dataclass
class ImportSettings:
    """`imagebert features import`: sources, the store, and how boxes are kept."""

    format: Literal["butd-tsv", "lxmert-tsv", "npz-butd", "npz-uniter", "hdf5"] = field(
        metadata=meta("the extractor's output layout"))  # fmt: skip
    sources: list[str] = field(metadata=meta("TSV/HDF5 files, npz files or folders of npz files", positional=True,
                                             metavar="SRC", path=True))  # fmt: skip
    out: str = field(metadata=meta("store folder (created; an existing one needs --resume or --overwrite)"))
    allow_empty: bool = field(default=False, metadata=meta("accept sources with no records (an empty store)"))
    top_n: int | None = field(default=None, metadata=meta("keep the N most confident boxes"))
    min_conf: float | None = field(default=None, metadata=meta("keep boxes with confidence >= T ..."))
    min_boxes: int | None = field(
        default=None, metadata=meta("with --min-conf: keep at least this many (10)")
    )
    max_boxes: int | None = field(
        default=None, metadata=meta("with --min-conf: keep at most this many (100)")
    )
    dtype: Literal["float16", "float32"] = field(default="float16", metadata=meta("stored feature type"))
    skip_bad: bool = field(default=False, metadata=meta(
        "skip bad records (counted by reason) instead of stopping"))  # fmt: skip
    rejects: str | None = field(
        default=None, metadata=meta("with --skip-bad: write skipped records here (JSONL)")
    )
    allow_pickle: bool = field(default=False, metadata=meta(
        "UNSAFE for untrusted files: unpickle the detectron2 npz 'info' dict (class ids/confidences)"))  # fmt: skip
    image_sizes: str | None = field(default=None, metadata=meta(
        "npz-uniter: TSV image_id<TAB>width<TAB>height to turn boxes into pixels", path=True))  # fmt: skip
    threads: str = threads_field()

    def validate(self) -> None:
        from imagebert.runtime.threads import parse_threads

        if not self.sources:
            raise ConfigError("sources: give at least one SRC file or folder")
        if self.rejects and not self.skip_bad:
            raise ConfigError("--rejects needs --skip-bad")
        if self.top_n is not None and self.min_conf is not None:
            raise ConfigError("give --top-n or --min-conf, not both")
        for flag, value in (("--top-n", self.top_n), ("--min-boxes", self.min_boxes),
                            ("--max-boxes", self.max_boxes)):  # fmt: skip
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.min_conf is not None and not 0 <= self.min_conf <= 1:
            raise ConfigError(f"--min-conf must lie in [0, 1], got {self.min_conf}")
        if self.min_conf is None and (self.min_boxes is not None or self.max_boxes is not None):
            raise ConfigError("--min-boxes/--max-boxes only apply with --min-conf")
        parse_threads(self.threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    feats = subparsers.add_parser("features", help="import and inspect region-feature stores")
    fsub = feats.add_subparsers(dest="features_command", metavar="SUBCOMMAND")

    imp = fsub.add_parser(
        "import", help="convert extractor output into a feature store (resumable)",
        description="Settings: flags, --config FILE (keys as in ImportSettings) and --set.",
    )  # fmt: skip
    add_config_file_arguments(imp)
    again = imp.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue an existing (interrupted) store at --out"
    )
    again.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    add_config_arguments(imp, ImportSettings)
    imp.set_defaults(func=cmd_import)

    info = fsub.add_parser("info", help="counts, feature width, box statistics, class labels present")
    info.add_argument("store")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    ver = fsub.add_parser(
        "verify", help="read every record and check its checksum (exit 1 when any is damaged)"
    )
    ver.add_argument("store")
    ver.add_argument("--json", action="store_true", help="print JSON")
    ver.set_defaults(func=cmd_verify)
    feats.set_defaults(func=lambda a: (feats.print_help(), 1)[1])

    ds = subparsers.add_parser("datasets", help="check a dataset definition (YAML)")
    dsub = ds.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")
    chk = dsub.add_parser("check", help="load the captions and the store, pair them, print counts")
    add_config_file_arguments(chk, "datasets", positional=True)
    chk.add_argument("--split", default=None, help="only this split (default: all)")
    chk.set_defaults(func=cmd_check)
    ds.set_defaults(func=lambda a: (ds.print_help(), 1)[1])


def cmd_import(args: argparse.Namespace) -> int:
    from imagebert.config_utils import load_command_config
    from imagebert.data.formats import read_image_sizes
    from imagebert.data.importer import import_features
    from imagebert.data.store import BoxSelection
    from imagebert.rundir import open_run_dir
    from imagebert.runtime.threads import apply_threads

    s = load_command_config(ImportSettings, args)
    apply_threads(s.threads, check_load=False)  # I/O-bound
    lock = open_run_dir(s.out, resume=args.resume, overwrite=args.overwrite, what="feature store")
    if lock is not None:
        lock.release()  # the store writer takes its own lock
    if s.min_conf is not None:
        selection = BoxSelection(
            min_confidence=s.min_conf,
            min_boxes=10 if s.min_boxes is None else s.min_boxes,
            max_boxes=100 if s.max_boxes is None else s.max_boxes,
        )
    elif s.top_n is not None:
        selection = BoxSelection(top_n=s.top_n)
    else:
        selection = None
    sizes = read_image_sizes(s.image_sizes) if s.image_sizes else None
    report = import_features(
        s.format, s.sources, s.out, box_selection=selection, dtype=s.dtype, skip_bad=s.skip_bad,
        rejects=s.rejects, allow_pickle=s.allow_pickle, image_sizes=sizes, allow_empty=s.allow_empty,
    )  # fmt: skip
    print(f"imported {report.added} images into {s.out}; {report.already_present} already present (resumed)")
    if report.skipped:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(report.skipped.items()))
        print(
            f"skipped {report.skipped_total} bad records ({detail})"
            + (f"; written to {s.rejects}" if s.rejects else "")
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from imagebert.data.store import FeatureStore

    info = FeatureStore(args.store).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from imagebert.data.store import verify_store

    result = verify_store(args.store)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"{result['path']}: {result['records']} records, {result['verified']} checksums match"
        if result["without_checksum"]:
            line += f", {result['without_checksum']} without a checksum (written before per-record checksums)"
        if result["damaged"]:
            line += f", {result['damaged']} DAMAGED"
        print(line)
        if result["damaged_ids"]:
            print("damaged: " + ", ".join(result["damaged_ids"]), file=sys.stderr)
        for problem in result["problems"]:
            print(f"problem: {problem}", file=sys.stderr)
    return 0 if result["ok"] else 1


def cmd_check(args: argparse.Namespace) -> int:
    from imagebert.config_utils import absolutize_overrides, config_argument, resolve_config_path
    from imagebert.data.dataset import PATH_KEYS, PairDataset, load_dataset_spec

    config = config_argument(args)
    if not config:
        raise ConfigError("give a dataset YAML (a file, or a shipped name such as datasets/coco)")
    overrides = absolutize_overrides(args.overrides, PATH_KEYS)
    ds = PairDataset(load_dataset_spec(resolve_config_path(config, "datasets"), overrides), split=args.split)
    print(f"{len(ds)} captions of {len(ds.image_ids)} images paired with {ds.store.path}")
    if ds.num_missing:
        print(f"skipped {ds.num_missing} captions of {len(ds.missing_image_ids)} images missing from the store",
              file=sys.stderr)  # fmt: skip
    return 0
