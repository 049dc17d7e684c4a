"""LAIT throughput: pages/s per core, and the speed-up from 1 to 2 Dask workers, on a generated WARC corpus.

    .venv/bin/python benchmarks/bench_lait.py --files 8 --pages-per-file 100

Each page has one photo-like 400x400 JPEG in the same WARC (every page goes through every step: parsing,
language id, dominant image, decode + re-encode, both classifiers, text cleaning, scoring). The neural features
are off (the default). Every configuration runs from scratch into its own output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from imagebert.lait import load_lait_config, run_lait
from imagebert.lait.pipeline import start_local_cluster
from imagebert.lait.synthetic import ENGLISH, WarcBuilder, article, encode, photo

NOUNS = ["boat", "dog", "house", "tree", "river", "bridge", "market", "garden", "train", "mountain", "street"]
ADJ = ["small", "old", "red", "quiet", "busy", "tall", "green", "wooden", "stone", "bright"]


def build(root: Path, files: int, pages: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    n = 0
    for f in range(files):
        with WarcBuilder(root / f"crawl-{f:03d}.warc.gz") as w:
            for p in range(pages):
                i = f * pages + p
                caption = (
                    f"A {rng.choice(ADJ)} {rng.choice(NOUNS)} near the {rng.choice(ADJ)} {rng.choice(NOUNS)}"
                )
                img = f"http://site{f}.example.com/img/{p}.jpg"
                figure = (
                    f"<figure><img src='{img}' alt='{caption} number {i}' width='400' height='400'></figure>"
                )
                w.page(f"http://site{f}.example.com/post/{p}", article(f"Post {i}", ENGLISH, figure))
                w.image(img, encode(photo(i)))
                n += 1
    return n


def _warmup() -> bool:
    """Import the pipeline and load the language model in a worker, so timings measure pages, not start-up."""
    from imagebert.lait.config import ImageConfig, TextConfig
    from imagebert.lait.images import decode_image
    from imagebert.lait.pages import detect_language
    from imagebert.lait.text import TextCleaner

    detect_language("warm up the language identifier with an English sentence")
    TextCleaner(TextConfig()).check("alt", "warm up the word frequency tables")
    img = decode_image(encode(photo(0)), ImageConfig())
    from imagebert.lait.images import heuristic_type, load_classifier

    load_classifier("learned", ImageConfig(), heuristic_type)(
        img.thumb
    )  # the photo filter's CNN, loaded once
    return True


def _cpu() -> float:
    return time.process_time()


def plain_loop(crawl: Path) -> dict:
    """The peer: one process, warcio + selectolax, no framework: each page parsed, its first <img> with alt
    looked up in the same WARC, decoded, checked for size and re-encoded. No language id, no classifiers."""
    import io

    from PIL import Image
    from selectolax.lexbor import LexborHTMLParser
    from warcio.archiveiterator import ArchiveIterator

    t0, c0 = time.perf_counter(), time.process_time()
    pairs = 0
    for warc in sorted(crawl.glob("*.warc.gz")):
        images, pages = {}, []
        with open(warc, "rb") as f:
            for rec in ArchiveIterator(f):
                if rec.rec_type != "response":
                    continue
                ct = rec.http_headers.get_header("Content-Type") or ""
                url = rec.rec_headers.get_header("WARC-Target-URI")
                body = rec.content_stream().read()
                (pages.append((url, body)) if ct.startswith("text/html") else images.__setitem__(url, body))
        for _url, body in pages:
            tree = LexborHTMLParser(body.decode("utf-8", "replace"))
            img = next((n for n in tree.css("img") if n.attributes.get("alt")), None)
            if img is None or img.attributes.get("src") not in images:
                continue
            im = Image.open(io.BytesIO(images[img.attributes["src"]])).convert("RGB")
            if min(im.size) > 300:
                im.save(io.BytesIO(), format="JPEG", quality=90)
                pairs += 1
    return {
        "process_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "pairs": pairs,
        "startup_s": 0.0,
    }


def run_serial(crawl: Path, out: Path, overrides: list[str]) -> dict:
    cfg = load_lait_config(None, overrides)
    _warmup()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = run_lait([crawl], out, cfg, workers=1)
    return {
        "process_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "pairs": summary["pairs"],
        "startup_s": 0.0,
    }


def run_cluster(crawl: Path, out: Path, workers: int, overrides: list[str]) -> dict:
    """`run_lait --scheduler` on a warm LocalCluster of `workers` single-threaded processes (the real code path:
    indexing, record-range tasks, aggregation); CPU = the workers' process time + the client's."""
    from distributed import Client

    cfg = load_lait_config(None, overrides)
    t0 = time.perf_counter()
    with start_local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(_warmup)
        t1 = time.perf_counter()
        w0 = sum(client.run(_cpu).values())
        c0 = time.process_time()
        summary = run_lait([crawl], out, cfg, scheduler=cluster.scheduler_address)
        cpu = sum(client.run(_cpu).values()) - w0 + time.process_time() - c0
        t2 = time.perf_counter()
    return {"process_s": t2 - t1, "cpu_s": cpu, "pairs": summary["pairs"], "startup_s": t1 - t0}


BEGIN, END = "<!-- THROUGHPUT BEGIN (bench_lait.py) -->", "<!-- THROUGHPUT END -->"


def write_results(report: dict, args) -> None:
    """The table, written by this script between markers in benchmarks/results/lait.md (never typed by hand)."""
    lines = [
        BEGIN,
        "",
        "### Throughput after record-range tasks (`benchmarks/bench_lait.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_lait.py --files {args.files} --pages-per-file "
        f"{args.pages_per_file} --repeats {args.repeats}"
        + "".join(f" --set {s}" for s in args.set)
        + " --write-results`",
        "",
        f"Machine: {report['machine']}, shared (1-minute load average {report['load_average_1min_at_start']} at "
        f"start, {report['load_average_1min_at_end']} at end). {report['pages']} pages in {report['files']} WARC "
        "file(s); default config (learned photo filter on).",
        "",
        "| configuration | cluster start s | wall s | pages/s | pages/s per core | CPU s | pages per CPU s | pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in report["results"].items():
        lines.append(
            f"| {label} | {r['cluster_start_s']} | {r['process_s']} | {r['pages_per_s']} | "
            f"{r['pages_per_s_per_core']} | {r['cpu_s']} | {r['pages_per_cpu_s']} | {r['pairs']} |"
        )
    lines += ["", f"Speed-up 1 -> 2 workers: {report['speedup_1_to_2_workers']}x.", "", END]
    path = Path(__file__).resolve().parent / "results" / "lait.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        old = old[: old.index(BEGIN)] + old[old.index(END) + len(END) + 1 :]
    path.write_text(old.rstrip() + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--pages-per-file", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--set", action="append", default=[], help="config override for every LAIT run")
    ap.add_argument(
        "--write-results", action="store_true", help="append the table to benchmarks/results/lait.md"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crawl = root / "crawl"
        crawl.mkdir()
        load0 = round(os.getloadavg()[0], 1)
        t0 = time.perf_counter()
        pages = build(crawl, args.files, args.pages_per_file)
        gen = time.perf_counter() - t0
        results: dict[str, dict] = {}
        configs = (
            ("plain warcio+selectolax loop", -1),
            ("in-process", 0),
            ("dask 1 worker", 1),
            ("dask 2 workers", 2),
        )
        for rep in range(args.repeats):  # interleaved, best of N: the machine is shared
            for label, workers in configs:
                out = root / f"out-{workers}-{rep}"
                if workers < 0:
                    r = plain_loop(crawl)
                elif workers == 0:
                    r = run_serial(crawl, out, args.set)
                else:
                    r = run_cluster(crawl, out, workers, args.set)
                cores = max(1, workers)
                row = {
                    "cluster_start_s": round(r["startup_s"], 2),
                    "process_s": round(r["process_s"], 2),
                    "pages_per_s": round(pages / r["process_s"], 1),
                    "pages_per_s_per_core": round(pages / r["process_s"] / cores, 1),
                    "cpu_s": round(r["cpu_s"], 2),
                    "pages_per_cpu_s": round(pages / r["cpu_s"], 1),
                    "pairs": r["pairs"],
                }
                if label not in results or row["process_s"] < results[label]["process_s"]:
                    results[label] = row
        one, two = results["dask 1 worker"]["process_s"], results["dask 2 workers"]["process_s"]
        report = {
            "pages": pages,
            "files": args.files,
            "corpus_build_s": round(gen, 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
            "load_average_1min_at_start": load0,
            "results": results,
            "speedup_1_to_2_workers": round(one / two, 2),
            "overrides": args.set,
        }
        print(json.dumps(report, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        if args.write_results:
            write_results(report, args)


if __name__ == "__main__":
    main()
