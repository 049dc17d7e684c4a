"""`imagebert index build|add|info` and `imagebert serve` (see docs/serve.md).

Commands raise data and path errors plainly; `imagebert.cli.main` turns them into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

from imagebert.config_utils import ConfigError, add_config_arguments, add_config_file_arguments, meta
from imagebert.runtime.allocator import cpu_allocator_field, tune_cpu_allocator
from imagebert.runtime.threads import threads_field

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw")


@dataclass
class SourceSettings:
    """Where the gallery comes from (`index build` / `index add`)."""

    dataset: str | None = field(default=None, metadata=meta("dataset YAML (feature store + captions)",
                                                            config="datasets"))  # fmt: skip
    split: str = field(default="test", metadata=meta("split of --dataset, or 'all'"))
    features: str | None = field(default=None, metadata=meta("a region-feature store (instead of --dataset)",
                                                             path=True))  # fmt: skip
    captions: str | None = field(default=None, metadata=meta(
        "caption list (.tsv/.jsonl of image_id + caption) for --features/--images", path=True))  # fmt: skip
    images: str | None = field(default=None, metadata=meta(
        "folder of the images: thumbnails for the page (ids = file stems); with `index add` and no "
        "--dataset/--features, new images to extract", path=True))  # fmt: skip


@dataclass
class EmbedSettings:
    """How the gallery is embedded."""

    device: str = "cpu"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="fp32", metadata=meta(
        "precision of the embedding passes (fp32: what evaluate's fast mode uses with --precision fp32)"))  # fmt: skip
    batch_size: int = 128
    thumb_size: int = field(default=256, metadata=meta("longest side of the stored thumbnails"))
    cpu_allocator: Literal["tuned", "system"] = cpu_allocator_field()


@dataclass
class IndexBuildSettings:
    checkpoint: str = field(metadata=meta("checkpoint folder whose ITC projections were trained", positional=True,
                                          path=True))  # fmt: skip
    out: str = field(metadata=meta("the index folder to create"))
    backend: Literal["auto", "torch", "faiss", "faiss-hnsw"] = field(default="auto", metadata=meta(
        "first-stage search: exact torch, faiss flat (exact), faiss HNSW; auto = faiss above 200k items when "
        "installed"))  # fmt: skip
    source: SourceSettings = field(default_factory=SourceSettings, metadata=meta(flat=True))
    embed: EmbedSettings = field(default_factory=EmbedSettings, metadata=meta(flat=True))
    threads: str = threads_field()

    def validate(self) -> None:
        _check_source(self.source)
        _check_sizes(self.embed.batch_size, self.embed.thumb_size)


@dataclass
class IndexAddSettings:
    index: str = field(metadata=meta("an index folder made by `imagebert index build`", positional=True,
                                     path=True))  # fmt: skip
    checkpoint: str = field(metadata=meta("the checkpoint the index was built with", path=True))
    source: SourceSettings = field(default_factory=SourceSettings, metadata=meta(flat=True))
    embed: EmbedSettings = field(default_factory=EmbedSettings, metadata=meta(flat=True))
    threads: str = threads_field()

    def validate(self) -> None:
        _check_source(self.source, allow_images_only=True)
        _check_sizes(self.embed.batch_size, self.embed.thumb_size)


@dataclass
class ServeSettings:
    index: str = field(metadata=meta("an index folder made by `imagebert index build`", positional=True,
                                     path=True))  # fmt: skip
    checkpoint: str = field(metadata=meta("the checkpoint the index was built with", path=True))
    host: str = field(default="127.0.0.1", metadata=meta("interface to listen on (default: loopback only)"))
    port: int = 8000
    device: str = field(default="cpu", metadata=meta("cpu, cuda, cuda:1, ..."))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata=meta(
        "auto = bf16 where the hardware has it (the score head stays fp32)"))  # fmt: skip
    weights: Literal["fp32", "int8"] = field(default="fp32", metadata=meta(
        "int8: the cross-encoder re-ranks with its encoder layers in int8 matmuls (CPU only, fp32 activations; "
        "query embeddings keep the fp32 weights); faster re-ranking on CPUs, see BENCHMARKS.md"))  # fmt: skip
    backend: Literal["auto", "torch", "faiss", "faiss-hnsw"] | None = field(default=None, metadata=meta(
        "override the index's first-stage backend"))  # fmt: skip
    batch_size: int = field(default=64, metadata=meta("cross-encoder pairs per forward pass"))
    max_batch_pairs: int = field(default=1024, metadata=meta("pairs gathered from concurrent requests"))
    batch_wait_ms: float = field(default=2.0, metadata=meta("how long to wait for more requests"))
    max_upload_mb: float = 10.0
    max_pixels: int | None = field(default=None, metadata=meta("reject larger uploads (decompression bombs)"))
    uploads: bool = field(default=True, metadata=meta("accept uploaded images (--no-uploads refuses them)"))
    cpu_allocator: Literal["tuned", "system"] = cpu_allocator_field()
    threads: str = threads_field()

    def validate(self) -> None:
        from imagebert.runtime.threads import parse_threads

        _check_sizes(self.batch_size, self.max_batch_pairs)
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must lie in 1..65535, got {self.port}")
        if self.weights == "int8":
            from imagebert.runtime.quantize import int8_setting_conflict

            conflict = int8_setting_conflict(device=self.device, precision=self.precision)
            if conflict:
                raise ConfigError(conflict)
        parse_threads(self.threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or extend a search index for `imagebert serve`",
                              description="A gallery's contrastive embeddings, ids, captions and thumbnails.")  # fmt: skip
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")

    b = sub.add_parser("build", help="build a new index from a dataset split or a feature store + captions")
    add_config_file_arguments(b)
    add_config_arguments(b, IndexBuildSettings)
    b.set_defaults(func=run_build)

    a = sub.add_parser(
        "add", help="add images (a dataset split, a store, or a folder of new images) to an index"
    )
    add_config_file_arguments(a)
    add_config_arguments(a, IndexAddSettings)
    a.set_defaults(func=run_add)

    i = sub.add_parser("info", help="print what an index holds")
    i.add_argument("index")
    i.set_defaults(func=run_info)

    s = subparsers.add_parser("serve", help="serve an index: web page and JSON API (127.0.0.1 by default)",
                              description="Text -> images and image -> captions search over an index.")  # fmt: skip
    add_config_file_arguments(s)
    add_config_arguments(s, ServeSettings)
    s.set_defaults(func=run_serve)


def _check_sizes(*values: int) -> None:
    if any(v < 1 for v in values):
        raise ConfigError(f"sizes must be >= 1, got {', '.join(str(v) for v in values)}")


def _check_source(src: SourceSettings, allow_images_only: bool = False) -> None:
    if src.dataset and src.features:
        raise ConfigError("give --dataset or --features, not both")
    if not src.dataset and not src.features and not (allow_images_only and src.images):
        raise ConfigError("give --dataset DATASET.yaml, or --features STORE (with --captions FILE)"
                          + (", or --images DIR" if allow_images_only else ""))  # fmt: skip
    if src.captions and src.dataset:
        raise ConfigError("--captions goes with --features or --images, not --dataset")


def run_build(args: argparse.Namespace) -> int:
    from imagebert.config_utils import load_command_config
    from imagebert.runtime.threads import apply_threads
    from imagebert.serve.index import build_index

    s = load_command_config(IndexBuildSettings, args)
    src, emb = s.source, s.embed
    tune_cpu_allocator(emb.cpu_allocator)
    apply_threads(s.threads)
    # data and path errors (InputError, ConfigError, FileNotFoundError, ...) go to imagebert.cli.main as they are
    summary = build_index(s.checkpoint, s.out, dataset=src.dataset, split=src.split, features=src.features,
                          captions=src.captions, images_dir=src.images, backend=s.backend, device=emb.device,
                          precision=emb.precision, batch_size=emb.batch_size, thumb_size=emb.thumb_size)  # fmt: skip
    print(summary.text())
    return 0


def run_add(args: argparse.Namespace) -> int:
    from imagebert.config_utils import load_command_config
    from imagebert.runtime.threads import apply_threads
    from imagebert.serve.index import add_to_index

    s = load_command_config(IndexAddSettings, args)
    src, emb = s.source, s.embed
    tune_cpu_allocator(emb.cpu_allocator)
    apply_threads(s.threads)
    summary = add_to_index(s.index, s.checkpoint, dataset=src.dataset, split=src.split, features=src.features,
                           captions=src.captions, images=src.images, device=emb.device, precision=emb.precision,
                           batch_size=emb.batch_size, thumb_size=emb.thumb_size)  # fmt: skip
    print(summary.text())
    return 0


def run_info(args: argparse.Namespace) -> int:
    from imagebert.serve.index import read_meta

    print(json.dumps(read_meta(args.index), indent=2))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from imagebert.cli import CliError, require
    from imagebert.config_utils import load_command_config
    from imagebert.runtime.threads import apply_threads

    s = load_command_config(ServeSettings, args)
    uvicorn = require("uvicorn", "serve")  # before torch loads: a missing extra is reported at once
    require("fastapi", "serve")
    import torch

    from imagebert.serve.service import Limits, load_service

    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {s.device}: CUDA is not available in this torch build")
    tune_cpu_allocator(s.cpu_allocator)  # a server scores batch after batch: keep their buffers mapped
    apply_threads(s.threads)
    app, searcher = load_service(s.index, s.checkpoint, device=s.device, precision=s.precision, backend=s.backend,
                                 batch_size=s.batch_size, max_batch_pairs=s.max_batch_pairs,
                                 max_wait_ms=s.batch_wait_ms, max_pixels=s.max_pixels,
                                 limits=Limits(max_upload_bytes=int(s.max_upload_mb * 2**20)),
                                 uploads=s.uploads, weights=s.weights)  # fmt: skip
    print(
        f"imagebert serve: {searcher.index.num_images} images, {searcher.index.num_captions} captions on "
        f"http://{s.host}:{s.port}/ ({searcher.image_search.name} first stage, {s.device})",
        flush=True,
    )
    try:
        uvicorn.run(app, host=s.host, port=s.port, log_level="info", access_log=False)  # type: ignore[attr-defined]
    finally:
        searcher.worker.close()
    return 0
