"""Region-feature store benchmark: import speed, read throughput and peak memory, against peers in the same run.

    .venv/bin/python benchmarks/bench_data.py --images 1500 --workdir /tmp/bench_data

Writes a bottom-up-attention TSV (100 boxes x 2048 float32 per image, about 1.1 MB a row), then, each phase in
a fresh child process so peak RSS is per phase:
  import   `imagebert features import --format butd-tsv` into an fp16 LMDB store (images/s, peak RSS)
  peer-mem the common loader pattern: read the whole TSV into a dict of decoded arrays (images/s, peak RSS)
  peer-npy write one fp16 .npy per image (images/s, peak RSS), the other common layout
  read     random and sequential reads from the store and from the .npy files (samples/s)
Not a timed test: numbers depend on the disk and the page cache. "cold" random reads first drop the store and
the .npy files from the page cache (posix_fadvise), "warm" is a second pass; sequential reads follow them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

N_BOXES, DIM = 100, 2048


def peak_rss_mib() -> float:
    """Peak resident set (ru_maxrss): includes file pages mapped and touched (LMDB's memory map)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonPeak:
    """Samples RssAnon (private memory: what the process really holds, excluding the page cache) every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak


def make_tsv(path: Path, n_images: int) -> None:
    """Rows in generate_tsv.py's layout. One feature matrix is reused (encoding 2 GB of base64 would dominate
    the run); boxes differ per row."""
    rng = np.random.default_rng(0)
    feats = base64.b64encode(rng.standard_normal((N_BOXES, DIM)).astype(np.float32).tobytes()).decode()
    with open(path, "w") as f:
        for i in range(n_images):
            boxes = base64.b64encode(rng.uniform(0, 500, (N_BOXES, 4)).astype(np.float32).tobytes()).decode()
            f.write(f"{100000 + i}\t640\t480\t{N_BOXES}\t{boxes}\t{feats}\n")


def phase_import(tsv: str, out: str) -> dict:
    from imagebert.data.importer import import_features

    anon = AnonPeak()
    t = time.perf_counter()
    report = import_features("butd-tsv", [tsv], out)
    dt = time.perf_counter() - t
    return {"images": report.added, "seconds": dt, "images_per_s": report.added / dt, "peak_rss_mib": peak_rss_mib(),
            "peak_anon_mib": anon.stop()}  # fmt: skip


def phase_peer_mem(tsv: str) -> dict:
    """Everything into RAM, as many research loaders do (decode each row, keep it in a dict)."""
    csv.field_size_limit(1 << 30)
    anon = AnonPeak()
    t = time.perf_counter()
    data = {}
    with open(tsv, newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            n = int(row[3])
            data[row[0]] = (
                np.frombuffer(base64.b64decode(row[5]), np.float32).reshape(n, -1),
                np.frombuffer(base64.b64decode(row[4]), np.float32).reshape(n, 4),
            )
    dt = time.perf_counter() - t
    return {"images": len(data), "seconds": dt, "images_per_s": len(data) / dt, "peak_rss_mib": peak_rss_mib(),
            "peak_anon_mib": anon.stop()}  # fmt: skip


def phase_peer_npy(tsv: str, out: str) -> dict:
    csv.field_size_limit(1 << 30)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    anon = AnonPeak()
    t = time.perf_counter()
    count = 0
    with open(tsv, newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            n = int(row[3])
            feats = np.frombuffer(base64.b64decode(row[5]), np.float32).reshape(n, -1).astype(np.float16)
            np.save(folder / f"{row[0]}.npy", feats)
            np.save(
                folder / f"{row[0]}.boxes.npy",
                np.frombuffer(base64.b64decode(row[4]), np.float32).reshape(n, 4),
            )
            count += 1
    dt = time.perf_counter() - t
    return {"images": count, "seconds": dt, "images_per_s": count / dt, "peak_rss_mib": peak_rss_mib(),
            "peak_anon_mib": anon.stop()}  # fmt: skip


def phase_read(store_path: str, npy: str, samples: int) -> dict:
    from imagebert.data.store import FeatureStore

    store = FeatureStore(store_path)
    ids = store.ids()
    order = np.random.default_rng(1).integers(0, len(ids), samples)
    folder = Path(npy)
    anon = AnonPeak()
    res: dict = {}
    acc = 0.0
    for tag in ("cold", "warm"):  # cold: files dropped from the page cache first; warm: second pass
        if tag == "cold":
            evict([Path(store_path) / "data.mdb", *folder.glob("*.npy")])
        t = time.perf_counter()
        for i in order:
            acc += float(store[ids[i]].features[0, 0])
        res[f"store_random_{tag}_per_s"] = samples / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in order:
            acc += float(np.load(folder / f"{ids[i]}.npy")[0, 0])
            np.load(folder / f"{ids[i]}.boxes.npy")
        res[f"npy_random_{tag}_per_s"] = samples / (time.perf_counter() - t)
    t = time.perf_counter()
    n = 0
    for r in store:
        acc += float(r.features[0, 0])
        n += 1
    res["store_sequential_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for image_id in ids:
        acc += float(np.load(folder / f"{image_id}.npy")[0, 0])
        np.load(folder / f"{image_id}.boxes.npy")
    res["npy_sequential_per_s"] = len(ids) / (time.perf_counter() - t)
    res["peak_anon_mib"] = anon.stop()
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the OS page cache (posix_fadvise DONTNEED; no root needed, others unaffected)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--workdir", default="/tmp/bench_data")
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        name, *rest = args.phase
        fn = {
            "import": phase_import,
            "peer-mem": phase_peer_mem,
            "peer-npy": phase_peer_npy,
            "read": phase_read,
        }
        if name == "read":
            rest[2] = int(rest[2])
        print(json.dumps(fn[name](*rest)))
        return
    import shutil

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tsv, store, npy = work / "feats.tsv", work / "store", work / "npy"
    t = time.perf_counter()
    make_tsv(tsv, args.images)
    print(
        f"wrote {tsv} ({tsv.stat().st_size / 2**20:.0f} MiB, {args.images} images) in {time.perf_counter() - t:.1f}s"
    )
    results = {
        "import": run_child("import", str(tsv), str(store)),
        "peer-mem": run_child("peer-mem", str(tsv)),
        "peer-npy": run_child("peer-npy", str(tsv), str(npy)),
        "read": run_child("read", str(store), str(npy), str(args.samples)),
    }
    results["tsv_mib"] = tsv.stat().st_size / 2**20
    results["store_mib"] = (store / "data.mdb").stat().st_size / 2**20
    print(json.dumps(results, indent=2))
    imp, mem, npy_r, rd = results["import"], results["peer-mem"], results["peer-npy"], results["read"]
    print(f"import: {imp['images_per_s']:.0f} img/s, peak RSS {imp['peak_rss_mib']:.0f} MiB, peak private "
          f"{imp['peak_anon_mib']:.0f} MiB (TSV {results['tsv_mib']:.0f} MiB, store {results['store_mib']:.0f} MiB)")  # fmt: skip
    print(f"peer in-memory TSV load: {mem['images_per_s']:.0f} img/s, peak RSS {mem['peak_rss_mib']:.0f} MiB, "
          f"peak private {mem['peak_anon_mib']:.0f} MiB")  # fmt: skip
    print(f"peer per-image .npy: {npy_r['images_per_s']:.0f} img/s, peak RSS {npy_r['peak_rss_mib']:.0f} MiB")
    for tag in ("cold", "warm"):
        a, b = rd[f"store_random_{tag}_per_s"], rd[f"npy_random_{tag}_per_s"]
        print(f"random reads ({tag}): store {a:.0f}/s vs npy {b:.0f}/s ({a / b:.2f}x)")
    a, b = rd["store_sequential_per_s"], rd["npy_sequential_per_s"]
    print(f"sequential reads: store {a:.0f}/s vs npy {b:.0f}/s ({a / b:.2f}x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
