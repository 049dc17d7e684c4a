"""`imagebert features import|info|verify` and `imagebert datasets check`: bring region features and captions in."""

from __future__ import annotations

import argparse
import json
import sys

from imagebert.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    feats = subparsers.add_parser("features", help="import and inspect region-feature stores")
    fsub = feats.add_subparsers(dest="features_command", metavar="SUBCOMMAND")

    imp = fsub.add_parser("import", help="convert extractor output into a feature store (resumable)")
    imp.add_argument(
        "--format", required=True, choices=["butd-tsv", "lxmert-tsv", "npz-butd", "npz-uniter", "hdf5"]
    )
    imp.add_argument(
        "sources", nargs="+", metavar="SRC", help="TSV/HDF5 files, npz files or folders of npz files"
    )
    imp.add_argument(
        "--out", required=True, help="store folder (created; an existing one needs --resume or --overwrite)"
    )
    again = imp.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue an existing (interrupted) store at --out"
    )
    again.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    imp.add_argument(
        "--allow-empty", action="store_true", help="accept sources with no records (an empty store)"
    )
    sel = imp.add_mutually_exclusive_group()
    sel.add_argument("--top-n", type=int, help="keep the N most confident boxes")
    sel.add_argument("--min-conf", type=float, help="keep boxes with confidence >= T ...")
    imp.add_argument("--min-boxes", type=int, help="with --min-conf: keep at least this many (default 10)")
    imp.add_argument("--max-boxes", type=int, help="with --min-conf: keep at most this many (default 100)")
    imp.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored feature type")
    imp.add_argument(
        "--skip-bad", action="store_true", help="skip bad records (counted by reason) instead of stopping"
    )
    imp.add_argument("--rejects", help="with --skip-bad: write skipped records here (JSONL)")
    imp.add_argument(
        "--allow-pickle", action="store_true",
        help="UNSAFE for untrusted files: unpickle the detectron2 npz 'info' dict (class ids/confidences)",
    )  # fmt: skip
    imp.add_argument(
        "--image-sizes", help="npz-uniter: TSV image_id<TAB>width<TAB>height to turn boxes into pixels"
    )
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
    chk.add_argument("config")
    chk.add_argument("--split", default=None, help="only this split (default: all)")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    chk.set_defaults(func=cmd_check)
    ds.set_defaults(func=lambda a: (ds.print_help(), 1)[1])


def _cli_error(exc: Exception):
    from imagebert.cli import CliError

    return CliError(str(exc))


def cmd_import(args: argparse.Namespace) -> int:
    from imagebert.data.formats import read_image_sizes
    from imagebert.data.importer import import_features
    from imagebert.data.store import BoxSelection
    from imagebert.rundir import open_run_dir

    if args.rejects and not args.skip_bad:
        raise _cli_error(ValueError("--rejects needs --skip-bad"))
    for flag, value in (
        ("--top-n", args.top_n),
        ("--min-boxes", args.min_boxes),
        ("--max-boxes", args.max_boxes),
    ):
        if value is not None and value < 1:
            raise _cli_error(ValueError(f"{flag} must be >= 1, got {value}"))
    if args.min_conf is not None and not 0 <= args.min_conf <= 1:
        raise _cli_error(ValueError(f"--min-conf must lie in [0, 1], got {args.min_conf}"))
    try:
        lock = open_run_dir(args.out, resume=args.resume, overwrite=args.overwrite, what="feature store")
        if lock is not None:
            lock.release()  # the store writer takes its own lock

        if args.min_conf is None and (args.min_boxes is not None or args.max_boxes is not None):
            raise ValueError("--min-boxes/--max-boxes only apply with --min-conf")
        if args.min_conf is not None:
            selection = BoxSelection(
                min_confidence=args.min_conf,
                min_boxes=10 if args.min_boxes is None else args.min_boxes,
                max_boxes=100 if args.max_boxes is None else args.max_boxes,
            )
        elif args.top_n is not None:
            selection = BoxSelection(top_n=args.top_n)
        else:
            selection = None
        sizes = read_image_sizes(args.image_sizes) if args.image_sizes else None
        report = import_features(
            args.format, args.sources, args.out, box_selection=selection, dtype=args.dtype, skip_bad=args.skip_bad,
            rejects=args.rejects, allow_pickle=args.allow_pickle, image_sizes=sizes, allow_empty=args.allow_empty,
        )  # fmt: skip
    except (InputError, ValueError) as exc:
        raise _cli_error(exc) from exc
    print(
        f"imported {report.added} images into {args.out}; {report.already_present} already present (resumed)"
    )
    if report.skipped:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(report.skipped.items()))
        print(
            f"skipped {report.skipped_total} bad records ({detail})"
            + (f"; written to {args.rejects}" if args.rejects else "")
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from imagebert.data.store import FeatureStore

    try:
        info = FeatureStore(args.store).info()
    except InputError as exc:
        raise _cli_error(exc) from exc
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from imagebert.data.store import verify_store

    try:
        result = verify_store(args.store)
    except InputError as exc:
        raise _cli_error(exc) from exc
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
    from imagebert.config_utils import ConfigError
    from imagebert.data.dataset import PairDataset, load_dataset_spec

    try:
        ds = PairDataset(load_dataset_spec(args.config, args.set), split=args.split)
    except (InputError, ConfigError) as exc:
        raise _cli_error(exc) from exc
    print(f"{len(ds)} captions of {len(ds.image_ids)} images paired with {ds.store.path}")
    if ds.num_missing:
        print(f"skipped {ds.num_missing} captions of {len(ds.missing_image_ids)} images missing from the store",
              file=sys.stderr)  # fmt: skip
    return 0
