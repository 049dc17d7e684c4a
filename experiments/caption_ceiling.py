"""How well could a perfect model do at retrieval on the demo corpus? Many captions fit several images.

    .venv/bin/python -m experiments.caption_ceiling --corpus demo_out/corpus/dataset_demo.json --split test

For every caption of the split we decide, for every image of the split, whether the caption is TRUE of it, with
the generator's own semantics (`imagebert.demo.corpus`). The structured facts behind each caption are re-derived
by replaying the generator: the split's plan (`_plan`) and each image's `_captions` call are re-run with the same
seeds while `_relation_caption` and `_where` are wrapped to record which objects they were called with (the
wrappers call the originals with the same arguments, so the random stream and the captions are unchanged; the
replay is checked to reproduce the stored captions exactly). The remaining choices (which side a relation is told
from, whether a size word was added, which template) are read off by rendering the candidates with the
generator's helpers (`_a`, `SceneObject.phrase`, `_join`, `_counted`, `_where`) and keeping the one that equals
the stored text, so no free-text parsing is involved.

The oracle ranks all true candidates first in random order: IR (caption -> image) expected R@K = min(1, K/n) with
n the number of images the caption is true of; TR (image -> captions) expected R@K = 1 - C(m-c, K) / C(m, K) with
m the captions true of the image, c = 5 of them its own.

Two readings are reported. "generator" (the headline) takes every list caption the way the generator writes it:
the count caption ("two red circles and a blue star") names ALL objects of the scene with exact counts, and the
attribute list ("a small red circle and a large blue star") names all objects in left-to-right (cx) order even
without the words "from left to right" (the generator always sorts by cx). "lenient" is a sensitivity check for a
reader who does not know that: lists are exhaustive only when a total is stated ("three objects, ..."), counts
are "at least", and left-to-right order only binds when "from left to right:" is said.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagebert.demo import corpus as gen
from imagebert.demo.corpus import NUMBER_WORDS, SceneObject

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
KS = (1, 5, 10)
# The side words of `_relation_caption` (its local dict): "left of" is said "to the left of".
SIDE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# The relation templates of `_relation_caption`; only used to recognise which rendering equals the stored text.
REL_TEMPLATES = (
    "{A} {S} {B}",
    "{A} is {S} {B}",
    "there is {A} {S} {B}",
    "a picture with {A} {S} {B}",
    "{A} placed {S} {B}",
)
Desc = tuple[str | None, str, str]  # (size or None when the caption names no size, colour, class)


# ---------------------------------------------------------------------------------------------- replay


@contextmanager
def _recording(log: dict[str, list]):
    """Wrap the generator's module-level helpers to log their arguments; outputs and rng use are unchanged."""
    orig_rel, orig_where = gen._relation_caption, gen._where

    def rel_caption(a: SceneObject, b: SceneObject, rng: random.Random) -> str:
        out = orig_rel(a, b, rng)
        log["relation"].append((a, b, out))
        return out

    def where(o: SceneObject, size: int) -> str:
        log["where"].append(o)
        return orig_where(o, size)

    gen._relation_caption, gen._where = rel_caption, where
    try:
        yield
    finally:
        gen._relation_caption, gen._where = orig_rel, orig_where


def _desc(o: SceneObject, with_size: bool) -> Desc:
    return (o.size if with_size else None, o.color, o.cls)


def _rel_structure(caption: str, a: SceneObject, b: SceneObject) -> tuple | None:
    """Which (subject, relation, object) rendering of the pair (a, b) is the stored caption, or None."""
    base = gen._relation(a, b)
    found = set()
    # Unflipped: a `rel` b; flipped: b `_REL_FLIP[rel]` a -- exactly how `_relation_caption` words it.
    for x, y, rel in ((a, b, base), (b, a, gen._REL_FLIP[base])):
        for fx in (False, True):
            for fy in (False, True):
                A, B = gen._a(x.phrase(fx)), gen._a(y.phrase(fy))
                if caption in {t.format(A=A, B=B, S=SIDE[rel]) for t in REL_TEMPLATES}:
                    found.add(("relation", _desc(x, fx), rel, _desc(y, fy)))
    assert len(found) <= 1, (caption, found)
    return found.pop() if found else None


def _where_structure(caption: str, o: SceneObject, objs: list[SceneObject], size: int) -> tuple | None:
    """The where caption of `o`: its descriptor (with size only in the first template), position, stated total."""
    w = gen._where(o, size)
    total = NUMBER_WORDS[len(objs)]
    if caption == f"{gen._a(o.phrase(True))} {w}":
        return ("where", _desc(o, True), w, None)
    if caption == f"{gen._a(o.phrase())} {w} and {total} shapes in total":
        return ("where", _desc(o, False), w, len(objs))
    if caption in {f"an image with {gen._a(o.phrase())} {w}", f"there is {gen._a(o.phrase())} {w}"}:
        return ("where", _desc(o, False), w, None)
    return None


def _structure(caption: str, objs: list[SceneObject], size: int, log: dict[str, list]) -> tuple:
    """The structured fact behind one stored caption of the scene `objs`."""
    found = []
    for a, b, out in log["relation"]:
        if out == caption and (s := _rel_structure(caption, a, b)) is not None:
            found.append(s)
    listed = gen._join([gen._a(o.phrase(True)) for o in sorted(objs, key=lambda o: o.cx)])
    if caption in {listed, f"from left to right: {listed}", f"an image showing {listed}"}:
        ltr = tuple((o.size, o.color, o.cls) for o in sorted(objs, key=lambda o: o.cx))
        found.append(("attr", ltr, caption.startswith("from left to right: ")))
    counted, total = gen._counted(objs), NUMBER_WORDS[len(objs)]
    count_texts = {
        counted: False,
        f"{counted} on a plain background": False,
        f"there are {total} shapes: {counted}": True,
        f"a picture of {counted}": False,
        f"{total} objects, {counted}": True,
        f"{total} shapes in total: {counted}": True,
    }
    if caption in count_texts:
        comp = tuple(sorted(Counter((o.color, o.cls) for o in objs).items()))
        found.append(("count", comp, count_texts[caption]))
    for o in {id(o): o for o in log["where"]}.values():
        if (s := _where_structure(caption, o, objs, size)) is not None:
            found.append(s)
    found = list(dict.fromkeys(found))
    if len(found) != 1:
        raise RuntimeError(f"caption {caption!r}: {len(found)} structures {found}")
    return found[0]


def replay(images: list[dict], split: str, params: dict[str, Any]) -> list[list[tuple]]:
    """Per image of the split, the structures of its five stored captions (same order as `sentences`)."""
    size = params["image_size"]
    plan = gen._plan(len(images), split, params["seed"], size, params["distractor_fraction"])
    assert len(plan) == len(images)
    out = []
    for img, entry in zip(images, plan, strict=True):
        objs = [SceneObject(**o) for o in img["objects"]]
        planned = [(o.cls, o.color, o.size, o.cx, o.cy, o.side) for o in entry["objects"]]
        if planned != [(o.cls, o.color, o.size, o.cx, o.cy, o.side) for o in objs]:
            raise RuntimeError(f"image {img['imgid']}: the replayed plan does not match the stored objects")
        split_, k, part = entry["key"]
        rng = random.Random(gen._seed(params["seed"], split_, "captions", k, part))
        log: dict[str, list] = {"relation": [], "where": []}
        with _recording(log):
            caps = gen._captions(entry["objects"], size, rng, entry["focus"])
        stored = [s["raw"] for s in img["sentences"]]
        if caps != stored:
            raise RuntimeError(f"image {img['imgid']}: replayed captions {caps} != stored {stored}")
        out.append([_structure(c, entry["objects"], size, log) for c in caps])
    return out


# ---------------------------------------------------------------------------------------------- truth


def _matches(o: SceneObject, d: Desc) -> bool:
    # A size word is the object's size class ("small"/"large"), as `phrase(True)` writes it; no size = any size.
    size, color, cls = d
    return o.cls == cls and o.color == color and (size is None or o.size == size)


def _sub_multiset(want: Counter, have: Counter) -> bool:
    return all(have[k] >= v for k, v in want.items())


def _subsequence(want: tuple, have: list) -> bool:
    it = iter(have)
    return all(any(w == h for h in it) for w in want)


def is_true(s: tuple, objs: list[SceneObject], size: int, reading: str = "generator") -> bool:
    """Whether the caption with structure `s` is true of the scene `objs`."""
    kind = s[0]
    if kind == "relation":
        # Some object fitting A and ANOTHER object fitting B stand in the generator's `_relation` (the axis with
        # the larger box gap decides left/right vs above/below); "B flip(rel) A" is accepted too, as the
        # generator says it from either side (the two agree except when the centres tie exactly).
        _, da, rel, db = s
        return any(
            a is not b
            and _matches(a, da)
            and _matches(b, db)
            and (gen._relation(a, b) == rel or gen._REL_FLIP[gen._relation(b, a)] == rel)
            for a in objs
            for b in objs
        )
    if kind == "where":
        # `_where` regions are exclusive: "on the left" is the left third AND the middle row (a top-left object
        # is said "in the top left corner"), "in the middle" is the centre cell. A stated total is exact.
        _, d, w, total = s
        found = any(_matches(o, d) and gen._where(o, size) == w for o in objs)
        return found and (total is None or len(objs) == total)
    if kind == "count":
        _, comp, total_stated = s
        have = Counter((o.color, o.cls) for o in objs)
        if reading == "generator" or total_stated:  # `_counted(objs)` lists every object: exact composition
            return have == Counter(dict(comp))
        return _sub_multiset(Counter(dict(comp)), have)
    if kind == "attr":
        _, seq, ltr_stated = s
        have = [(o.size, o.color, o.cls) for o in sorted(objs, key=lambda o: o.cx)]
        if reading == "generator":  # all objects, always sorted by cx (also without "from left to right")
            return list(seq) == have
        if ltr_stated:
            return _subsequence(seq, have)
        return _sub_multiset(Counter(seq), Counter(have))
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------- oracle


def oracle(structs: list[list[tuple]], scenes: list[list[SceneObject]], size: int, reading: str) -> dict:
    """Truth matrix, self-check and the expected recall of a model that ranks the true candidates first."""
    caps = [(i, s) for i, ss in enumerate(structs) for s in ss]
    truth = [[is_true(s, objs, size, reading) for objs in scenes] for _, s in caps]
    failures = [(i, s) for (i, s), row in zip(caps, truth, strict=True) if not row[i]]
    n = [sum(row) for row in truth]
    ir = {k: 100 * statistics.fmean(min(1.0, k / max(x, 1)) for x in n) for k in KS}
    tr = {}
    m = [sum(truth[c][j] for c in range(len(caps))) for j in range(len(scenes))]
    for k in KS:
        vals = []
        for j, mj in enumerate(m):
            c = sum(1 for c_, (i, _) in enumerate(caps) if i == j and truth[c_][j])
            vals.append(1.0 if k >= mj else 1 - math.comb(mj - c, k) / math.comb(mj, k))
        tr[k] = 100 * statistics.fmean(vals)
    families = {}
    for fam in ("relation", "count", "attr", "where"):
        nf = [x for (_, s), x in zip(caps, n, strict=True) if s[0] == fam]
        if nf:
            families[fam] = {
                "captions": len(nf),
                "mean_n": statistics.fmean(nf),
                "median_n": statistics.median(nf),
                "share_n1": 100 * sum(x == 1 for x in nf) / len(nf),
                "ir_r1": 100 * statistics.fmean(1 / x for x in nf),
            }
    return {
        "failures": failures,
        "n": n,
        "m": m,
        "ir": ir,
        "tr": tr,
        "rsum": sum(ir.values()) + sum(tr.values()),
        "families": families,
    }


def report(res: dict[str, dict], corpus: Path, split: str, n_img: int, n_cap: int, command: str) -> str:
    lines = [
        "# Oracle retrieval ceiling of the demo corpus",
        "",
        f"`{command}`",
        "",
        f"Corpus `{corpus}`, split `{split}`: {n_img} images, {n_cap} captions. For every caption and every image",
        "of the split, is the caption TRUE of the image, with the generator's own semantics (structures re-derived",
        "by replaying `imagebert.demo.corpus._captions` with the corpus seeds, predicates built on its `_relation`",
        "and `_where`). A perfect model ranks all true candidates first, in random order: expected IR R@K =",
        "min(1, K/n) with n the images a caption is true of; expected TR R@K = 1 - C(m-5, K)/C(m, K) with m the",
        "captions true of the image (5 of them its own). Recall in %.",
        "",
        "| reading | IR R@1 | IR R@5 | IR R@10 | TR R@1 | TR R@5 | TR R@10 | RSUM | self-check failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        vals = [r["ir"][k] for k in KS] + [r["tr"][k] for k in KS]
        cells = " | ".join(f"{v:.1f}" for v in vals)
        lines.append(f"| {name} | {cells} | {r['rsum']:.1f} | {len(r['failures'])} |")
    lines += [
        "",
        "Images per caption (n) and captions per image (m):",
        "",
        "| reading | mean n | median n | max n | share n=1 (%) | mean m | median m | max m |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        n, m = r["n"], r["m"]
        lines.append(
            f"| {name} | {statistics.fmean(n):.2f} | {statistics.median(n):g} | {max(n)} | "
            f"{100 * sum(x == 1 for x in n) / len(n):.1f} | {statistics.fmean(m):.2f} | "
            f"{statistics.median(m):g} | {max(m)} |"
        )
    lines += [
        "",
        "By caption family:",
        "",
        "| reading | family | captions | mean n | median n | share n=1 (%) | oracle IR R@1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        for fam, f in r["families"].items():
            lines.append(
                f"| {name} | {fam} | {f['captions']} | {f['mean_n']:.2f} | {f['median_n']:g} | "
                f"{f['share_n1']:.1f} | {f['ir_r1']:.1f} |"
            )
    lines += [
        "",
        "Readings. `generator` (the headline) reads every caption as the generator writes it: the count caption",
        "lists ALL objects with exact counts (`_counted(objs)`), and the attribute list names all objects sorted",
        'by cx, so its order is left-to-right even without the words "from left to right". `lenient` is what a',
        "reader who does not know that could assume: lists are exhaustive only with a stated total, counts are",
        '"at least", order binds only after "from left to right:". Both readings share: a relation holds when',
        "some object fitting A and another fitting B stand in `_relation` (larger box-gap axis); a position holds",
        'when a fitting object\'s `_where` cell is exactly the one named ("on the left" = left third and middle',
        "row; corners are named as corners); a descriptor without a size word fits either size; a stated total of",
        "shapes is exact.",
        "",
        "Caveat: the oracle is uniform over true candidates. A Bayes-optimal model could do slightly better by",
        "ranking true candidates by how likely the generator is to write that caption for that image (e.g. an",
        "image with two fitting pairs is likelier to yield a relation caption), which this ceiling ignores.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True, help="dataset_demo.json (corpus.json beside it)")
    p.add_argument("--split", default="test")
    p.add_argument("--meta", type=Path, default=None, help="corpus.json with the build params")
    p.add_argument("--out", type=Path, default=DOCS / "caption_ceiling.md")
    args = p.parse_args(argv)
    data = json.loads(args.corpus.read_text(encoding="utf-8"))
    meta_path = args.meta or args.corpus.with_name(gen.META_NAME)
    params = json.loads(meta_path.read_text(encoding="utf-8"))["params"]
    images = sorted((e for e in data["images"] if e["split"] == args.split), key=lambda e: e["imgid"])
    if not images:
        raise SystemExit(f"{args.corpus}: no images in split {args.split!r}")
    structs = replay(images, args.split, params)
    scenes = [[SceneObject(**o) for o in e["objects"]] for e in images]
    size = params["image_size"]
    res = {r: oracle(structs, scenes, size, r) for r in ("generator", "lenient")}
    for name, r in res.items():
        for i, s in r["failures"]:
            cap = next(c["raw"] for c, st in zip(images[i]["sentences"], structs[i], strict=True) if st == s)
            print(f"SELF-CHECK FAILURE ({name}): image {images[i]['imgid']}: {cap!r} -> {s!r}")
    command = f".venv/bin/python -m experiments.caption_ceiling --corpus {args.corpus} --split {args.split}"
    text = report(res, args.corpus, args.split, len(images), sum(len(s) for s in structs), command)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    failed = sum(len(r["failures"]) for r in res.values())
    assert failed == 0, f"{failed} captions are not true of their own image: a predicate is wrong"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
