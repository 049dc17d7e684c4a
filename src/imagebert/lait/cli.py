"""`imagebert lait run|train-scorer|show-config`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imagebert.config_utils import add_config_file_arguments, defer_config_arguments


def _lait_config() -> type:
    from imagebert.lait.config import LaitConfig

    return LaitConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("lait", help="build image-text pairs from web crawls (LAIT pipeline)")
    sub = p.add_subparsers(dest="lait_command", metavar="STEP")

    run = sub.add_parser(
        "run", help="WARC files / HTML folders -> captions.jsonl + images/ + funnel report",
        description="Settings: --config FILE (a LAIT YAML or a shipped name such as lait/default), one flag per "
        "setting (--pages.min-chars N, --run.workers N, ...) and --set.",
    )  # fmt: skip
    run.add_argument("inputs", nargs="+", help="WARC files, HTML files, or folders holding them")
    run.add_argument("--out", required=True, help="output folder (also holds work/ for resumable shards)")
    add_config_file_arguments(run, "lait")
    run.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)"
    )
    again = run.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue an existing output folder (finished tasks are kept)"
    )
    again.add_argument(
        "--overwrite", action="store_true", help="delete an existing output folder and start again"
    )
    defer_config_arguments(run, _lait_config, aliases={"run.workers": ["--workers"]})
    run.set_defaults(func=_run)

    tr = sub.add_parser(
        "train-scorer", help="fit the relevance model on labelled (image, text, related) rows"
    )
    tr.add_argument("labels", help='JSONL rows: {"image": path, "text": str, "related": 0|1, "source"?}')
    tr.add_argument("--out", required=True, help="where to write the scorer (.safetensors)")
    add_config_file_arguments(tr, "lait")
    tr.set_defaults(func=_train)

    ms = sub.add_parser("make-sample", help="write a small synthetic WARC crawl to try the pipeline on")
    ms.add_argument("folder")
    ms.add_argument("--pages", type=int, default=12)
    ms.set_defaults(func=_make_sample)

    ms2 = sub.add_parser(
        "make-scorer-set", help="write the labelled relevance set the default scorer is trained on"
    )
    ms2.add_argument("folder")
    ms2.add_argument("--rows", type=int, default=1200)
    ms2.add_argument("--seed", type=int, default=0)
    ms2.set_defaults(func=_make_scorer_set)

    mp = sub.add_parser(
        "make-photo-set",
        help="write the labelled photo / non-photo set (real sample photos + rendered graphics) for the type filter",
    )
    mp.add_argument("folder")
    mp.add_argument("--seed", type=int, default=0)
    mp.add_argument("--per-photo", type=int, default=24, help="augmented copies of each real photograph")
    mp.add_argument("--rendered-per-kind", type=int, default=60, help="rendered seeds per non-photo kind")
    mp.set_defaults(func=_make_photo_set)

    tp = sub.add_parser(
        "train-photo-classifier",
        help="fit the photo / non-photo filter; prints precision/recall on held-out whole source photographs",
    )
    tp.add_argument("labels", help="labels.jsonl from make-photo-set (image, label photo|non_photo, source)")
    tp.add_argument(
        "--out", required=True, help="weights file (.safetensors); set images.photo_model to use it"
    )
    tp.add_argument("--folds", type=int, default=5)
    tp.add_argument("--metrics", default=None, help="also write the metrics here (JSON)")
    tp.set_defaults(func=_train_photo)

    sc = sub.add_parser("show-config", help="print the effective config as YAML")
    add_config_file_arguments(sc, "lait")
    defer_config_arguments(sc, _lait_config)
    sc.set_defaults(func=_show)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])


def _config(args: argparse.Namespace) -> object:
    from imagebert.config_utils import cli_overrides, config_argument, resolve_config_path
    from imagebert.lait.config import load_lait_config

    config = config_argument(args)
    return load_lait_config(
        resolve_config_path(config, "lait") if config else None, cli_overrides(args, _lait_config())
    )


def _run(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError
    from imagebert.lait.pipeline import LaitRunError, run_lait
    from imagebert.rundir import open_run_dir

    cfg = _config(args)
    # one writer per output folder, and no silent mixing with an earlier run's output
    lock = open_run_dir(args.out, resume=args.resume, overwrite=args.overwrite, what="LAIT output folder")
    try:
        summary = run_lait(args.inputs, args.out, cfg, scheduler=args.scheduler)
    except LaitRunError as exc:
        raise CliError(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()
    print(
        f"lait: {summary['pairs']} pairs from {summary['shards']} shards "
        f"({summary['processed']} processed, {summary['skipped']} already done); "
        f"report: {Path(args.out) / 'funnel.md'}, every rejected page: {Path(args.out) / 'rejects.jsonl'}"
    )
    if summary["stale_shards"]:
        print(
            f"lait: {summary['stale_shards']} shard folders in {Path(args.out) / 'work' / 'shards'} were made "
            "with other inputs or another config and were not used (config fingerprint "
            f"{summary['config_fingerprint']})"
        )
    for w in summary["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    if summary["skipped_input"] and cfg.run.strict_input:
        print(
            "lait: exit code 3 because input bytes were skipped (output written; "
            "--set run.strict_input=false to exit 0)",
            file=sys.stderr,
        )
        return 3
    return 0


def _train(args: argparse.Namespace) -> int:
    from imagebert.lait.train import train_from_jsonl

    cfg = _config(args)
    metrics = train_from_jsonl(args.labels, args.out, cfg)
    print(json.dumps(metrics))
    if not metrics["target_reached"]:
        print(
            f"WARNING: no threshold reaches held-out precision {metrics['target_precision']}; stored "
            f"{metrics['threshold']} (precision {metrics['heldout_precision']}). Label more rows.",
            file=sys.stderr,
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    cfg = _config(args)  # validates plug-in names and files too
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
    return 0


def _make_sample(args: argparse.Namespace) -> int:
    from imagebert.lait.synthetic import write_sample_crawl

    print(write_sample_crawl(args.folder, args.pages))
    return 0


def _make_scorer_set(args: argparse.Namespace) -> int:
    from imagebert.lait.scorer_set import write_scorer_set

    print(write_scorer_set(args.folder, args.rows, args.seed))
    return 0


def _make_photo_set(args: argparse.Namespace) -> int:
    from imagebert.lait.photoset import write_photo_set

    print(
        write_photo_set(
            args.folder, args.seed, per_photo=args.per_photo, rendered_per_kind=args.rendered_per_kind
        )
    )
    return 0


def _train_photo(args: argparse.Namespace) -> int:
    from imagebert.lait.photoclf import train_photo_classifier

    # bad labels (InputError) are reported by imagebert.cli.main
    metrics = train_photo_classifier(
        args.labels, args.out, folds=args.folds, log=lambda m: print(m, file=sys.stderr)
    )
    text = json.dumps(metrics, indent=1)
    if args.metrics:
        Path(args.metrics).write_text(text, encoding="utf-8")
    print(text)
    return 0
