"""Benchmark of `imagebert serve`: queries/s and latency over loopback HTTP, index build cost, recall agreement.

    nice -n 19 .venv/bin/python benchmarks/bench_serve.py [--requests 64] [--out benchmarks/results/serve.md]

1. Throughput and p50/p99 latency at 1, 8 and 32 concurrent clients for galleries of 1k, 10k and 100k images
   (synthetic unit embeddings, first stage only: `rerank: 0`), torch exact and faiss flat, and the full path (first
   stage + cross-encoder re-rank of the top 20) on the 1k gallery.
2. `index build` time and peak memory on a demo corpus.
3. Recall on that demo test split from the service (HTTP, one query at a time) against
   `imagebert evaluate --mode fast` (`evaluate_checkpoint`) with the same k, fp32: they must agree.

The model is a tiny ImageBERT (2 layers, hidden 64) trained for a few seconds on the demo corpus, so the figures
measure the service machinery, not BERT-base compute. Everything is written to the results file by this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MACHINE = "2-core CPU VM, 24 GiB, no GPU"


def _percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def _load(url: str, bodies: list[dict], clients: int, path: str) -> dict:
    from tests.serve.http_util import post_json

    lat: list[float] = []
    fails = 0

    def one(body: dict) -> None:
        nonlocal fails
        t = time.perf_counter()
        status, _, _ = post_json(url + path, body)
        lat.append(1000 * (time.perf_counter() - t))
        fails += status != 200

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    return {
        "qps": len(bodies) / wall,
        "p50": _percentile(lat, 50),
        "p99": _percentile(lat, 99),
        "fails": fails,
    }


def _synthetic_store(root: Path, demo_store: Path, n: int = 1000) -> Path:
    """A feature store of n images `syn0..` whose regions are the demo's (round-robin): what re-ranking reads."""
    from imagebert.data.store import FeatureStore, FeatureStoreWriter
    from imagebert.data.types import RegionRecord

    src = FeatureStore(demo_store)
    recs = [src[i] for i in src.ids()]
    out = root / "syn_store"
    with FeatureStoreWriter(out, feature_dim=recs[0].feature_dim) as w:
        for i in range(n):
            r = recs[i % len(recs)]
            w.add(RegionRecord(f"syn{i}", r.features, r.boxes, r.image_width, r.image_height))
    return out


def _synthetic_index(root: Path, n: int, dim: int, checkpoint: Path, store: Path, store_ids: list[str],
                     captions: list[str]) -> Path:  # fmt: skip
    """An index folder with n random unit image embeddings `syn0..` (regions of the first 1000 in `store`)."""
    from imagebert.serve.index import FORMAT, VERSION, checkpoint_fingerprint

    out = root / f"synthetic_{n}"
    shard = out / "shards" / "00000"
    shard.mkdir(parents=True)
    rng = np.random.default_rng(n)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.save(shard / "image_emb.npy", emb)
    cap = rng.normal(size=(len(captions), dim)).astype(np.float32)
    np.save(shard / "caption_emb.npy", cap / np.linalg.norm(cap, axis=1, keepdims=True))
    with open(shard / "images.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"syn{i}",
                                 "width": 96, "height": 96, "boxes": [[0, 0, 96, 96]], "thumb": None}) + "\n")  # fmt: skip
    with open(shard / "captions.jsonl", "w") as fh:
        for j, t in enumerate(captions):
            fh.write(
                json.dumps({"text": t, "image_id": f"syn{j % min(n, 1000)}", "caption_id": str(j)}) + "\n"
            )
    meta = {"format": FORMAT, "version": VERSION, "embedding_dim": dim, "precision": "fp32", "backend": "torch",
            "checkpoint": {"path": str(checkpoint), "fingerprint": checkpoint_fingerprint(checkpoint),
                           "itc_trained_steps": 1}, "extraction": None,
            "shards": [{"name": "00000", "store": str(store), "images": n, "captions": len(captions)}]}  # fmt: skip
    (out / "index.json").write_text(json.dumps(meta))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64, help="requests per (gallery, clients) setting")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import tests.serve.conftest as fx
    from tests.serve.http_util import post_json

    from imagebert.retrieval.evaluate import EvalOptions, evaluate_checkpoint
    from imagebert.serve.index import GalleryIndex, build_index
    from imagebert.serve.knn import faiss_available
    from imagebert.serve.service import ServerThread, load_service

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    t = time.perf_counter()
    (tmp / "demo").mkdir()
    (tmp / "ckpt").mkdir()
    demo = fx.make_demo(tmp / "demo")
    ckpt = fx.make_checkpoints(tmp / "ckpt", demo)["trained"]
    setup_s = time.perf_counter() - t

    # 2. index build
    summary = build_index(
        ckpt, tmp / "demo_index", dataset=demo["yaml"], split="test", images_dir=demo["images"]
    )
    demo_index = GalleryIndex(tmp / "demo_index")
    queries = demo_index.caption_texts

    # 3. recall: service vs evaluate fast, k = rerank depth
    k = 8
    app, searcher = load_service(tmp / "demo_index", ckpt, precision="fp32")
    with ServerThread(app) as url:
        ir_ranks, tr_hits = [], {1: 0, 5: 0, 10: 0}
        for c, text in enumerate(queries):
            _, _, r = post_json(url + "/search/images", {"query": text, "top_k": 10, "rerank": k})
            ids = [x["image_id"] for x in r["results"]]
            gt = demo_index.captions[c]["image_id"]
            ir_ranks.append(ids.index(gt) if gt in ids else 99)
        for iid in demo_index.image_ids:
            _, _, r = post_json(url + "/search/captions", {"image_id": iid, "top_k": 10, "rerank": k})
            own = [x["image_id"] == iid for x in r["results"]]
            for kk in tr_hits:
                tr_hits[kk] += any(own[:kk])
    searcher.worker.close()
    service = {f"IR R@{kk}": 100 * np.mean([r < kk for r in ir_ranks]) for kk in (1, 5, 10)}
    service.update({f"TR R@{kk}": 100 * v / demo_index.num_images for kk, v in tr_hits.items()})
    rep = evaluate_checkpoint(ckpt, demo["yaml"], split="test", protocol="flickr1k",
                              options=EvalOptions(mode="fast", ks_fast=[k], precision="fp32"))  # fmt: skip
    res = rep["results"]["flickr1k"][f"fast k={k}"]
    evaluate = {f"IR R@{kk}": res["image_retrieval"][f"R@{kk}"] for kk in (1, 5, 10)}
    evaluate.update({f"TR R@{kk}": res["text_retrieval"][f"R@{kk}"] for kk in (1, 5, 10)})
    agree = all(abs(service[key] - evaluate[key]) < 1e-6 for key in service)

    # 1. throughput / latency
    store_ids = demo_index.image_ids
    syn_store = _synthetic_store(tmp, demo["store"])
    rows = []
    backends = ["torch"] + (["faiss"] if faiss_available() else [])
    for n in args.sizes:
        idx_dir = _synthetic_index(tmp, n, 32, ckpt, syn_store, store_ids, queries)
        for backend in backends:
            app, searcher = load_service(idx_dir, ckpt, precision="fp32", backend=backend, uploads=False)
            with ServerThread(app) as url:
                post_json(url + "/search/images", {"query": "warm up", "rerank": 0})
                for clients in args.clients:
                    bodies = [{"query": queries[i % len(queries)], "top_k": 10, "rerank": 0}
                              for i in range(args.requests)]  # fmt: skip
                    m = _load(url, bodies, clients, "/search/images")
                    rows.append((n, backend, "first stage", clients, m))
                if n == min(args.sizes) and backend == "torch":
                    for clients in args.clients:
                        bodies = [{"query": queries[i % len(queries)], "top_k": 10, "rerank": 20}
                                  for i in range(args.requests)]  # fmt: skip
                        m = _load(url, bodies, clients, "/search/images")
                        m["largest_batch"] = searcher.worker.largest_batch
                        rows.append((n, backend, "first stage + re-rank 20", clients, m))
            searcher.worker.close()
            print(f"done {n} {backend}", flush=True)

    lines = [
        "# `imagebert serve` benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}`".rstrip() + " "
        f"(written by the script). Machine: {MACHINE} ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} torch threads), shared with other jobs while it ran, so "
        "absolute numbers are pessimistic. Model: tiny ImageBERT (2 layers, hidden 64, ITC dim 32) trained for "
        f"{fx.TRAIN_STEPS} steps on a {fx.NUM_IMAGES}-image demo corpus ({setup_s:.0f} s setup). Clients: Python "
        "threads over loopback HTTP (http.client), one connection per request.",
        "",
        "## Throughput and latency (POST /search/images, top 10)",
        "",
        "Galleries of 1k/10k/100k images hold synthetic unit embeddings (first stage only, `rerank: 0`); the "
        "re-rank rows score the top 20 with the cross-encoder, batched across concurrent requests.",
        "",
        "| gallery | backend | path | clients | queries/s | p50 ms | p99 ms | failed |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, backend, path, clients, m in rows:
        lines.append(f"| {n:,} | {backend} | {path} | {clients} | {m['qps']:.1f} | {m['p50']:.1f} | "
                     f"{m['p99']:.1f} | {m['fails']} |")  # fmt: skip
    rr = [m for _, _, p, c, m in rows if p.startswith("first stage +")]
    if rr:
        lines += [
            "",
            f"Largest cross-encoder batch seen (requests sharing one pass): {rr[-1]['largest_batch']}.",
        ]
    lines += [
        "",
        "## Index build (demo corpus)",
        "",
        f"`build_index` on {summary.total_images} images / {summary.total_captions} captions with thumbnails: "
        f"{summary.seconds:.2f} s, peak RSS of the benchmark process {summary.peak_rss_mib:.0f} MiB (includes "
        "torch and the model).",
        "",
        f"## Recall: service vs `imagebert evaluate --mode fast --k {k}` (fp32, demo test split)",
        "",
        "| | " + " | ".join(service) + " |",
        "|---|" + "---:|" * len(service),
        "| service (HTTP) | " + " | ".join(f"{v:.2f}" for v in service.values()) + " |",
        "| evaluate fast | " + " | ".join(f"{v:.2f}" for v in evaluate.values()) + " |",
        "",
        f"Agreement: **{'identical' if agree else 'DIFFERENT'}**.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
