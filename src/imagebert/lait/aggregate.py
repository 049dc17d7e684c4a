"""Step 5 and 6: merge shard outputs, keep the best description per image, drop generic descriptions, write the
dataset (captions.jsonl + images/) and the funnel report.

Runs once, after every shard is committed, reading only shard folders, so it is the same for a local and a
cluster run. Near-duplicate images are grouped by dHash with a banded index (pigeonhole: two 64-bit hashes within
distance d agree exactly on at least one of d + 1 bands), so grouping is not quadratic.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from imagebert.lait.config import LaitConfig
from imagebert.lait.funnel import Funnel
from imagebert.lait.images import hamming
from imagebert.runtime.atomic import atomic_copy, atomic_write_text


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_images(image_ids: list[str], hashes: list[int], max_distance: int) -> dict[str, int]:
    """image_id -> group number; identical ids share a group, and so do images within `max_distance` bits."""
    uf = _UnionFind(len(image_ids))
    if max_distance >= 0:
        bands = max_distance + 1
        widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            shift = 0
            for b, width in enumerate(widths):
                buckets[(b, (h >> shift) & ((1 << width) - 1))].append(i)
                shift += width
        for members in buckets.values():
            if len(members) < 2:
                continue
            for a_i, a in enumerate(members):
                for b in members[a_i + 1 :]:
                    if uf.find(a) != uf.find(b) and hamming(hashes[a], hashes[b]) <= max_distance:
                        uf.union(a, b)
    return {iid: uf.find(i) for i, iid in enumerate(image_ids)}


def normalise_caption(text: str) -> str:
    return re.sub(r"[^\w ]+", "", " ".join(text.lower().split()))


def read_shards(
    shards_dir: Path, names: list[str], examples_per_reason: int = 3
) -> tuple[list[dict], Funnel, list[Path]]:
    rows: list[dict] = []
    funnel = Funnel(examples_per_reason)
    dirs = []
    for name in sorted(names):
        d = shards_dir / name
        meta = json.loads((d / "funnel.json").read_text(encoding="utf-8"))
        funnel.merge(Funnel.from_dict(meta["funnel"], examples_per_reason))
        with open(d / "pairs.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    row["_shard"] = name
                    rows.append(row)
        dirs.append(d)
    return rows, funnel, dirs


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text, fsync=False)


def aggregate(
    work_dir: str | Path, out_dir: str | Path, shard_names: list[str], cfg: LaitConfig
) -> dict[str, Any]:
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    rows, funnel, dirs = read_shards(work_dir / "shards", shard_names, cfg.run.examples_per_reason)
    agg = cfg.aggregation
    # Deterministic order independent of which shard finished first.
    rows.sort(key=lambda r: (r["image_id"], -r["score"], r["caption"], r["page_url"]))
    unique_ids = sorted({r["image_id"] for r in rows})
    hash_of = {r["image_id"]: int(r["dhash"], 16) for r in rows}
    groups = group_images(unique_ids, [hash_of[i] for i in unique_ids], agg.dhash_max_distance)
    images_per_caption: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        images_per_caption[normalise_caption(r["caption"])].add(groups[r["image_id"]])
    generic = {c for c, g in images_per_caption.items() if len(g) > agg.max_images_per_description}
    best: dict[int, dict] = {}
    losers: list[dict] = []
    for r in rows:
        if normalise_caption(r["caption"]) in generic:
            funnel.drop(
                "aggregation",
                "shared_description",
                {
                    "url": r["page_url"],
                    "image": r["url"],
                    "text": r["caption"],
                    "images": len(images_per_caption[normalise_caption(r["caption"])]),
                },
            )
            continue
        g = groups[r["image_id"]]
        cur = best.get(g)
        key = (r["score"], r["image_id"], r["caption"], r["page_url"])
        if cur is None or key > (cur["score"], cur["image_id"], cur["caption"], cur["page_url"]):
            if cur is not None:
                losers.append(cur)
            best[g] = r
        else:
            losers.append(r)
    for r in sorted(losers, key=lambda r: (r["image_id"], r["caption"], r["page_url"])):
        winner = best[groups[r["image_id"]]]
        funnel.drop(
            "aggregation",
            "duplicate_image",
            {
                "url": r["page_url"],
                "image_id": r["image_id"],
                "text": r["caption"],
                "kept": {"page_url": winner["page_url"], "image_id": winner["image_id"]},
            },
        )
    kept = sorted(best.values(), key=lambda r: r["image_id"])
    funnel.kept("aggregation", len(kept))

    out_dir.mkdir(parents=True, exist_ok=True)
    images_out = out_dir / "images"
    images_out.mkdir(exist_ok=True)
    lines = []
    for r in kept:
        src = work_dir / "shards" / r["_shard"] / "images" / f"{r['image_id']}.jpg"
        dst = images_out / f"{r['image_id']}.jpg"
        if not dst.exists():
            atomic_copy(src, dst)
        row = {k: v for k, v in r.items() if not k.startswith("_") and k != "dhash"}
        lines.append(json.dumps(row, ensure_ascii=False))
    keep_ids = {r["image_id"] for r in kept}
    for stale in images_out.glob("*.jpg"):  # from an earlier run with other settings
        if stale.stem not in keep_ids:
            stale.unlink()
    _write_atomic(out_dir / "captions.jsonl", "".join(line + "\n" for line in lines))
    # Every rejected page of every step, in shard order then step order: one file to grep or load.
    reject_lines = []
    for d in dirs:
        path = d / "rejects.jsonl"
        if path.is_file():
            reject_lines += [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    reject_lines += [json.dumps(r, ensure_ascii=False) for r in funnel.rejects]
    _write_atomic(out_dir / "rejects.jsonl", "".join(line + "\n" for line in reject_lines))
    report = {**funnel.to_dict(), "output": {"pairs": len(kept), "shards": len(shard_names)}}
    _write_atomic(out_dir / "funnel.json", json.dumps(report, ensure_ascii=False, indent=1))
    _write_atomic(out_dir / "funnel.md", funnel.to_markdown() + f"\nOutput: {len(kept)} image-text pairs.\n")
    return {"pairs": len(kept), "funnel": funnel}
