"""`imagebert index build|add|info` and `imagebert serve` (see docs/serve.md)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or extend a search index for `imagebert serve`",
                              description="A gallery's contrastive embeddings, ids, captions and thumbnails.")  # fmt: skip
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")

    b = sub.add_parser("build", help="build a new index from a dataset split or a feature store + captions")
    b.add_argument("checkpoint", help="checkpoint folder whose ITC projections were trained")
    _source_args(b)
    b.add_argument("--out", required=True, help="the index folder to create")
    b.add_argument("--backend", default="auto", choices=("auto", "torch", "faiss", "faiss-hnsw"),
                   help="first-stage search: exact torch, faiss flat (exact), faiss HNSW; auto = faiss above "
                        "200k items when installed")  # fmt: skip
    _model_args(b)
    b.set_defaults(func=run_build)

    a = sub.add_parser(
        "add", help="add images (a dataset split, a store, or a folder of new images) to an index"
    )
    a.add_argument("index", help="an index folder made by `imagebert index build`")
    a.add_argument("--checkpoint", required=True, help="the checkpoint the index was built with")
    _source_args(a)
    _model_args(a)
    a.set_defaults(func=run_add)

    i = sub.add_parser("info", help="print what an index holds")
    i.add_argument("index")
    i.set_defaults(func=run_info)

    s = subparsers.add_parser("serve", help="serve an index: web page and JSON API (127.0.0.1 by default)",
                              description="Text -> images and image -> captions search over an index.")  # fmt: skip
    s.add_argument("index", help="an index folder made by `imagebert index build`")
    s.add_argument("--checkpoint", required=True, help="the checkpoint the index was built with")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto = bf16 where the hardware has it (the score head stays fp32)")  # fmt: skip
    s.add_argument("--backend", choices=("auto", "torch", "faiss", "faiss-hnsw"),
                   help="override the index's first-stage backend")  # fmt: skip
    s.add_argument("--batch-size", type=int, default=64, help="cross-encoder pairs per forward pass")
    s.add_argument(
        "--max-batch-pairs", type=int, default=1024, help="pairs gathered from concurrent requests"
    )
    s.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long to wait for more requests")
    s.add_argument("--max-upload-mb", type=float, default=10.0)
    s.add_argument("--max-pixels", type=int, default=None, help="reject larger uploads (decompression bombs)")
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    s.add_argument("--no-uploads", action="store_true", help="refuse uploaded images")
    s.set_defaults(func=run_serve)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="dataset YAML (feature store + captions)")
    p.add_argument("--split", default="test", help="split of --dataset, or 'all' (default: test)")
    p.add_argument("--features", help="a region-feature store (instead of --dataset)")
    p.add_argument(
        "--captions", help="caption list (.tsv/.jsonl of image_id + caption) for --features/--images"
    )
    p.add_argument("--images", help="folder of the images: thumbnails for the page (ids = file stems); with "
                                    "`index add` and no --dataset/--features, new images to extract")  # fmt: skip


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                   help="precision of the embedding passes (default fp32: what evaluate's fast mode uses with "
                        "--precision fp32)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--thumb-size", type=int, default=256, help="longest side of the stored thumbnails")


def _cli_error(exc: Exception):
    from imagebert.cli import CliError

    return CliError(str(exc))


def _check_source(args: argparse.Namespace, allow_images_only: bool = False) -> None:
    from imagebert.cli import CliError

    if args.dataset and args.features:
        raise CliError("give --dataset or --features, not both")
    if not args.dataset and not args.features and not (allow_images_only and args.images):
        raise CliError("give --dataset DATASET.yaml, or --features STORE (with --captions FILE)"
                       + (", or --images DIR" if allow_images_only else ""))  # fmt: skip
    if args.captions and args.dataset:
        raise CliError("--captions goes with --features or --images, not --dataset")


_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError)


def run_build(args: argparse.Namespace) -> int:
    from imagebert.serve.index import build_index

    _check_source(args)
    try:
        summary = build_index(args.checkpoint, args.out, dataset=args.dataset, split=args.split,
                              features=args.features, captions=args.captions, images_dir=args.images,
                              backend=args.backend, device=args.device, precision=args.precision,
                              batch_size=args.batch_size, thumb_size=args.thumb_size)  # fmt: skip
    except _ERRORS as exc:
        raise _cli_error(exc) from exc
    print(summary.text())
    return 0


def run_add(args: argparse.Namespace) -> int:
    from imagebert.serve.index import add_to_index

    _check_source(args, allow_images_only=True)
    try:
        summary = add_to_index(args.index, args.checkpoint, dataset=args.dataset, split=args.split,
                               features=args.features, captions=args.captions, images=args.images,
                               device=args.device, precision=args.precision, batch_size=args.batch_size,
                               thumb_size=args.thumb_size)  # fmt: skip
    except _ERRORS as exc:
        raise _cli_error(exc) from exc
    print(summary.text())
    return 0


def run_info(args: argparse.Namespace) -> int:
    from imagebert.serve.index import read_meta

    try:
        meta = read_meta(args.index)
    except _ERRORS as exc:
        raise _cli_error(exc) from exc
    print(json.dumps(meta, indent=2))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from imagebert.serve.service import Limits, load_service

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise _cli_error(ValueError(f"--device {args.device}: CUDA is not available in this torch build"))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        app, searcher = load_service(args.index, args.checkpoint, device=args.device, precision=args.precision,
                                     backend=args.backend, batch_size=args.batch_size,
                                     max_batch_pairs=args.max_batch_pairs, max_wait_ms=args.batch_wait_ms,
                                     max_pixels=args.max_pixels,
                                     limits=Limits(max_upload_bytes=int(args.max_upload_mb * 2**20)),
                                     uploads=not args.no_uploads)  # fmt: skip
    except _ERRORS as exc:
        raise _cli_error(exc) from exc
    print(
        f"imagebert serve: {searcher.index.num_images} images, {searcher.index.num_captions} captions on "
        f"http://{args.host}:{args.port}/ ({searcher.image_search.name} first stage, {args.device})",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    finally:
        searcher.worker.close()
    return 0
