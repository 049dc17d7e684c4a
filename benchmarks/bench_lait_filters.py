"""Quality of the LAIT image filters on real photographs vs rendered non-photos, written to
benchmarks/results/lait.md (between the FILTERS markers).

    imagebert lait make-photo-set /tmp/photoset
    imagebert lait train-photo-classifier /tmp/photoset/labels.jsonl --out /tmp/pc.safetensors --metrics /tmp/pc.json
    .venv/bin/python benchmarks/bench_lait_filters.py /tmp/photoset --metrics /tmp/pc.json

The learned filter's figures are the grouped cross-validation of `train-photo-classifier` (every image scored by
a model that never saw any crop of its source photograph). The rules (skin tone, palette/flat/edge) have no
training, so they are measured on the whole set.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from PIL import Image

from imagebert.lait.config import ImageConfig
from imagebert.lait.images import heuristic_racy, heuristic_type, skin_ratio
from imagebert.lait.photoclf import load_photo_rows

RESULTS = Path(__file__).resolve().parent / "results" / "lait.md"
BEGIN, END = "<!-- FILTERS BEGIN (bench_lait_filters.py) -->", "<!-- FILTERS END -->"


def measure_rules(labels: Path) -> dict:
    cfg = ImageConfig()
    racy, kind = heuristic_racy(cfg), heuristic_type(cfg)
    per_source: dict[str, dict] = defaultdict(lambda: {"n": 0, "racy": 0, "type_reject": 0, "skin": []})
    tot = {"photo": [0, 0, 0], "non_photo": [0, 0, 0]}  # n, racy-rejected, type-rejected
    for r in load_photo_rows(labels):
        with Image.open(r["image"]) as im:
            t = im.convert("RGB")
        t.thumbnail((256, 256), Image.Resampling.BILINEAR)
        is_racy = racy(t)[0] != "normal"
        type_rej = kind(t)[0] != "normal"
        s = per_source[r["source"]] if r["label"] == "photo" else None
        tot[r["label"]][0] += 1
        tot[r["label"]][1] += is_racy
        tot[r["label"]][2] += type_rej
        if s is not None:
            s["n"] += 1
            s["racy"] += is_racy
            s["type_reject"] += type_rej
            s["skin"].append(skin_ratio(t))
    return {"totals": tot, "photo_sources": dict(per_source)}


def _pr(photos_kept: int, photos: int, non_kept: int) -> tuple[float, float]:
    return photos_kept / max(1, photos_kept + non_kept), photos_kept / max(1, photos)


def report(rules: dict, cv: dict) -> str:
    p, n = rules["totals"]["photo"], rules["totals"]["non_photo"]
    lines = [BEGIN, "", "### Image filters on real photographs (`benchmarks/bench_lait_filters.py`)", ""]
    lines += [
        f"Set: `imagebert lait make-photo-set` (seed 0): {p[0]} photographs (augmented copies of "
        f"{len(rules['photo_sources'])} real source photographs from scikit-image, scikit-learn and matplotlib) "
        f"and {n[0]} non-photos (rendered charts, screenshots, diagrams, icons, clip-art; shipped logos).",
        "",
        "| filter | photos kept (recall) | precision of kept vs non-photos | how measured |",
        "|---|---:|---:|---|",
    ]
    c = cv["cv"]
    lines.append(
        f"| learned (`type_classifier: learned`, default) | {c['photos_kept']}/{c['photos']} = {c['recall']:.3f} | "
        f"{c['precision']:.3f} ({c['non_photos_kept']} of {c['non_photos']} non-photos kept) | "
        f"5-fold grouped CV: whole source photographs held out |"
    )
    # palette/flat/edge rule alone (racy off)
    kept_p, kept_n = p[0] - p[2], n[0] - n[2]
    prec, rec = _pr(kept_p, p[0], kept_n)
    lines.append(
        f"| palette/flat/edge rules (`heuristic`) | {kept_p}/{p[0]} = {rec:.3f} | {prec:.3f} | whole set (no training) |"
    )
    lines.append(
        f"| skin-tone racy rule (`racy_classifier: heuristic`) | rejects {p[1]} of {p[0]} photographs "
        f"({p[1] / max(1, p[0]):.1%}) | - | whole set; every photograph here is safe |"
    )
    lines += [
        "",
        "Per source photograph (held-out share kept by the learned filter; rules on all copies):",
        "",
    ]
    lines += [
        "| source | copies | learned: kept (held out) | racy rule rejects | palette rules reject | median skin share |"
    ]
    lines += ["|---|---:|---:|---:|---:|---:|"]
    for name, s in sorted(rules["photo_sources"].items()):
        skin = sorted(s["skin"])[len(s["skin"]) // 2]
        kept = cv["per_source"].get(name, {}).get("kept_share", float("nan"))
        lines.append(f"| {name} | {s['n']} | {kept:.2f} | {s['racy']} | {s['type_reject']} | {skin:.2f} |")
    missed = [
        f"{k} ({v['kept_share']:.2f})"
        for k, v in cv["per_source"].items()
        if v["label"] == 0 and v["kept_share"] > 0
    ]
    lines += [
        "",
        "Non-photo sources the learned filter let through in CV (share kept): "
        + (", ".join(missed) or "none"),
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("photo_set", help="folder written by `imagebert lait make-photo-set`")
    ap.add_argument("--metrics", required=True, help="JSON from `lait train-photo-classifier --metrics`")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rules = measure_rules(Path(args.photo_set) / "labels.jsonl")
    cv = json.loads(Path(args.metrics).read_text())
    text = report(rules, cv)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
        if BEGIN in old and END in old:
            old = old[: old.index(BEGIN)] + old[old.index(END) + len(END) + 1 :]
        RESULTS.write_text(old.rstrip() + "\n\n" + text, encoding="utf-8")


if __name__ == "__main__":
    main()
