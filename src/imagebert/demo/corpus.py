"""The built-in demo corpus: rendered scenes of coloured shapes with five true captions each.

Why rendered scenes: no package ships captioned photos, and a newcomer should see the whole method work on a
laptop. The scenes are real RGB images (anti-aliased Pillow drawings on a textured background) that go through
exactly the path real datasets take: a Karpathy-style split JSON for the captions, a COCO-style box file with
the true boxes and categories, and `imagebert extract --boxes` for the region features.

Hard distractors: a fraction of the images come in pairs that hold the same objects, but with two objects'
positions swapped (a swapped relation) or two objects' colours swapped (a swapped attribute). Both images of a
pair have the same bag of object and colour words, so only a model that binds words to regions and reads
their positions can tell them apart; the bag-of-words baseline in `baselines.py` ties on them.

Deterministic: every image is drawn from its own seed derived from (seed, split, index), so the corpus does
not depend on the order of generation or the platform's hash randomisation.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASSES",
    "COLORS",
    "CORPUS_VERSION",
    "DemoCorpusPaths",
    "SceneObject",
    "build_demo_corpus",
    "render_scene",
    "tokenize",
]

CORPUS_VERSION = 1
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "diamond")
PLURALS = {c: (c + "es" if c.endswith(("s", "x")) else c + "s") for c in CLASSES}
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 180),
    "black": (35, 35, 35),
}
SIZES = {"small": 0.17, "large": 0.31}  # side as a fraction of the canvas
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_SUPERSAMPLE = 4
KARPATHY_NAME = "dataset_demo.json"
BOXES_NAME = "boxes_demo.json"
META_NAME = "corpus.json"


@dataclass
class SceneObject:
    """One drawn object; `box` is x1, y1, x2, y2 in pixels (the tight box of the drawn shape)."""

    cls: str
    color: str
    size: str
    cx: float
    cy: float
    side: float
    box: list[float] = field(default_factory=list)

    def phrase(self, with_size: bool = False) -> str:
        return f"{self.size} {self.color} {self.cls}" if with_size else f"{self.color} {self.cls}"

    def placed_box(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass
class DemoCorpusPaths:
    """Where a built corpus lives. Extract it with
    `imagebert extract {images_dir} --boxes {boxes_json} --out STORE`."""

    root: Path
    images_dir: Path
    karpathy_json: Path
    boxes_json: Path
    meta_json: Path
    num_images: dict[str, int]


# ---------------------------------------------------------------------------------------------- seeds


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


# ---------------------------------------------------------------------------------------------- drawing


def _shape_mask(cls: str, side_px: int) -> Image.Image:
    """An anti-aliased L-mode mask of one shape filling a `side_px` square (drawn 4x, then downsampled)."""
    n = side_px * _SUPERSAMPLE
    m = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(m)
    c = n / 2
    if cls == "circle":
        d.ellipse((0, 0, n - 1, n - 1), fill=255)
    elif cls == "square":
        d.rectangle((n * 0.06, n * 0.06, n * 0.94, n * 0.94), fill=255)
    elif cls == "triangle":
        d.polygon([(c, 0), (n - 1, n * 0.9), (0, n * 0.9)], fill=255)
    elif cls == "star":
        pts = []
        for k in range(10):
            r = c if k % 2 == 0 else c * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((c + r * math.cos(a), c + 0.05 * n + r * math.sin(a)))
        d.polygon(pts, fill=255)
    elif cls == "cross":
        t = n * 0.18
        d.rectangle((c - t, 0, c + t, n - 1), fill=255)
        d.rectangle((0, c - t, n - 1, c + t), fill=255)
    elif cls == "ring":
        d.ellipse((0, 0, n - 1, n - 1), fill=255)
        r = n * 0.28
        d.ellipse((c - r, c - r, c + r, c + r), fill=0)
    elif cls == "heart":
        pts = []
        for k in range(120):
            t = 2 * math.pi * k / 120
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((c + x / 17 * c, c * 0.92 - y / 17 * c))
        d.polygon(pts, fill=255)
    elif cls == "diamond":
        d.polygon([(c, 0), (n * 0.85, c), (c, n - 1), (n * 0.15, c)], fill=255)
    else:
        raise ValueError(f"unknown class {cls!r}")
    return m.resize((side_px, side_px), Image.LANCZOS)


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A pale, slightly textured background so the images are not flat synthetic fields."""
    base = rng.uniform(200, 245, size=3).astype(np.float32)
    tint = rng.uniform(-18, 18, size=3).astype(np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None] * tint[None, None, :]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    noise = rng.standard_normal(size=(size, size, 1), dtype=np.float32) * 5.0
    arr = base[None, None, :] + ramp + noise
    np.clip(arr, 0, 255, out=arr)
    arr = arr.astype(np.uint8)
    return Image.fromarray(arr, "RGB").filter(ImageFilter.GaussianBlur(0.6))


def render_scene(objects: list[SceneObject], size: int, seed: int) -> Image.Image:
    """Draw the objects onto a textured background; fills in each object's tight `box`."""
    rng = np.random.default_rng(seed)
    canvas = _background(size, rng)
    for obj in objects:
        side = max(4, int(round(obj.side)))
        mask = _shape_mask(obj.cls, side)
        x0 = int(round(obj.cx - side / 2))
        y0 = int(round(obj.cy - side / 2))
        jitter = rng.integers(-12, 13, size=3)
        color = tuple(int(v) for v in np.clip(np.array(COLORS[obj.color]) + jitter, 0, 255))
        layer = Image.new("RGB", (side, side), color)
        canvas.paste(layer, (x0, y0), mask)
        bx = mask.point(lambda v: 255 if v >= 64 else 0).getbbox() or (0, 0, side, side)
        obj.box = [float(x0 + bx[0]), float(y0 + bx[1]), float(x0 + bx[2]), float(y0 + bx[3])]
    return canvas


# ---------------------------------------------------------------------------------------------- scenes


def _overlaps(a: tuple, b: tuple, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _fits(objs: list[SceneObject], size: int, gap: float) -> bool:
    boxes = [o.placed_box() for o in objs]
    if any(b[0] < 2 or b[1] < 2 or b[2] > size - 2 or b[3] > size - 2 for b in boxes):
        return False
    return not any(
        _overlaps(boxes[i], boxes[j], gap) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
    )


def _sample_objects(rng: random.Random, size: int) -> list[SceneObject]:
    gap = size * 0.03
    while True:
        count = rng.choice((2, 3, 3, 4))
        objs: list[SceneObject] = []
        for _ in range(count):
            if objs and rng.random() < 0.3:  # repeat a class (sometimes with its colour) so counts matter
                prev = rng.choice(objs)
                cls, color = prev.cls, (prev.color if rng.random() < 0.6 else rng.choice(list(COLORS)))
            else:
                cls, color = rng.choice(CLASSES), rng.choice(list(COLORS))
            sz = rng.choice(list(SIZES))
            side = SIZES[sz] * size * rng.uniform(0.92, 1.08)
            for _try in range(60):
                o = SceneObject(cls, color, sz, rng.uniform(side / 2 + 2, size - side / 2 - 2),
                                rng.uniform(side / 2 + 2, size - side / 2 - 2), side)  # fmt: skip
                if _fits([*objs, o], size, gap):
                    objs.append(o)
                    break
            else:
                break
        if len(objs) == count:
            return objs


def _relation(a: SceneObject, b: SceneObject) -> str:
    """How `a` stands to `b`: 'left of', 'right of', 'above' or 'below' (the axis with the larger gap)."""
    ax = a.placed_box()
    bx = b.placed_box()
    gap_x = max(bx[0] - ax[2], ax[0] - bx[2])
    gap_y = max(bx[1] - ax[3], ax[1] - bx[3])
    if gap_x >= gap_y:
        return "left of" if a.cx < b.cx else "right of"
    return "above" if a.cy < b.cy else "below"


def _distinct_pairs(objs: list[SceneObject], key) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs)) if key(objs[i]) != key(objs[j])]


def _make_distractor(
    objs: list[SceneObject], rng: random.Random, size: int
) -> tuple[list, str, tuple] | None:
    """The same objects with a swapped relation (positions) or a swapped attribute (colours), or None."""
    kinds = ["relation", "attribute"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "relation":
            pairs = _distinct_pairs(objs, lambda o: (o.cls, o.color))
            rng.shuffle(pairs)
            for i, j in pairs:
                new = [SceneObject(o.cls, o.color, o.size, o.cx, o.cy, o.side) for o in objs]
                new[i].cx, new[i].cy, new[j].cx, new[j].cy = objs[j].cx, objs[j].cy, objs[i].cx, objs[i].cy
                if _fits(new, size, size * 0.03) and _relation(new[i], new[j]) != _relation(objs[i], objs[j]):
                    return new, "relation", (i, j)
        else:
            pairs = [
                (i, j) for i, j in _distinct_pairs(objs, lambda o: o.color) if objs[i].cls != objs[j].cls
            ]
            if pairs:
                i, j = rng.choice(pairs)
                new = [SceneObject(o.cls, o.color, o.size, o.cx, o.cy, o.side) for o in objs]
                new[i].color, new[j].color = objs[j].color, objs[i].color
                return new, "attribute", (i, j)
    return None


# ---------------------------------------------------------------------------------------------- captions


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _counted(objs: list[SceneObject], with_color: bool = True) -> str:
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        key = (o.color if with_color else "", o.cls)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (color, cls), n in groups.items():
        noun = cls if n == 1 else PLURALS[cls]
        words = f"{color} {noun}".strip()
        parts.append(_a(words) if n == 1 else f"{NUMBER_WORDS[n]} {words}")
    return _join(parts)


def _where(o: SceneObject, size: int) -> str:
    col = "left" if o.cx < size / 3 else ("right" if o.cx > 2 * size / 3 else "")
    row = "top" if o.cy < size / 3 else ("bottom" if o.cy > 2 * size / 3 else "")
    if row and col:
        return f"in the {row} {col} corner"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the middle"


_REL_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _relation_caption(a: SceneObject, b: SceneObject, rng: random.Random) -> str:
    rel = _relation(a, b)
    if rng.random() < 0.4:  # say it from the other object's side
        a, b, rel = b, a, _REL_FLIP[rel]
    pa, pb = a.phrase(rng.random() < 0.3), b.phrase(rng.random() < 0.3)
    side = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[
        rel
    ]
    template = rng.choice(
        [
            "{A} {S} {B}",
            "{A} is {S} {B}",
            "there is {A} {S} {B}",
            "a picture with {A} {S} {B}",
            "{A} placed {S} {B}",
        ]
    )
    return template.format(A=_a(pa), B=_a(pb), S=side)


def _captions(
    objs: list[SceneObject], size: int, rng: random.Random, focus: tuple[int, int] | None
) -> list[str]:
    """Five distinct true captions: two relations (the focus pair first), a count, an attribute list, a position."""
    n = len(objs)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng.shuffle(pairs)
    first = focus if focus is not None else pairs[0]
    other = next((p for p in pairs if p != first), first)
    one = objs[first[0]] if focus is not None else rng.choice(objs)
    total = NUMBER_WORDS[n]

    def count_caption() -> str:
        return rng.choice(
            [
                _counted(objs),
                f"{_counted(objs)} on a plain background",
                f"there are {total} shapes: {_counted(objs)}",
                f"a picture of {_counted(objs)}",
                f"{total} objects, {_counted(objs)}",
                f"{total} shapes in total: {_counted(objs)}",
            ]
        )

    def attr_caption() -> str:
        listed = _join([_a(o.phrase(True)) for o in sorted(objs, key=lambda o: o.cx)])
        return rng.choice([listed, f"from left to right: {listed}", f"an image showing {listed}"])

    def where_caption(o: SceneObject) -> str:
        return rng.choice(
            [
                f"{_a(o.phrase(True))} {_where(o, size)}",
                f"{_a(o.phrase())} {_where(o, size)} and {total} shapes in total",
                f"an image with {_a(o.phrase())} {_where(o, size)}",
                f"there is {_a(o.phrase())} {_where(o, size)}",
            ]
        )

    caps = [
        _relation_caption(objs[first[0]], objs[first[1]], rng),
        count_caption(),
        attr_caption(),
        where_caption(one),
        _relation_caption(objs[other[0]], objs[other[1]], rng),
    ]
    # Small scenes can repeat a caption: redraw duplicates from the same (true) families until all differ.
    families = [
        lambda: _relation_caption(*(objs[k] for k in rng.choice(pairs)), rng),
        count_caption,
        attr_caption,
        lambda: where_caption(rng.choice(objs)),
    ]
    for _ in range(200):
        dup = next((k for k in range(1, 5) if caps[k] in caps[:k]), None)
        if dup is None:
            break
        caps[dup] = rng.choice(families)()
    rng.shuffle(caps)
    return caps


def tokenize(text: str) -> list[str]:
    """Karpathy-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


# ---------------------------------------------------------------------------------------------- the corpus


def _plan(num: int, split: str, seed: int, size: int, distractor_fraction: float) -> list[dict[str, Any]]:
    """Scenes of one split: a `distractor_fraction` of the images come as (scene, distractor) pairs."""
    plan: list[dict[str, Any]] = []
    k = 0
    while len(plan) < num:
        rng = random.Random(_seed(seed, split, "scene", k))
        objs = _sample_objects(rng, size)
        want_pair = len(plan) + 2 <= num and rng.random() < distractor_fraction
        twin = _make_distractor(objs, rng, size) if want_pair else None
        if twin is None:
            plan.append({"objects": objs, "focus": None, "distractor": None, "key": (split, k, 0)})
        else:
            new, kind, focus = twin
            plan.append({"objects": objs, "focus": focus, "distractor": kind, "key": (split, k, 0)})
            plan.append({"objects": new, "focus": focus, "distractor": kind, "key": (split, k, 1)})
        k += 1
    return plan


def _params(num_train: int, num_val: int, num_test: int, seed: int, image_size: int, fraction: float) -> dict:
    return {
        "version": CORPUS_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "seed": seed,
        "image_size": image_size,
        "distractor_fraction": fraction,
    }


def _paths(root: Path, counts: dict[str, int]) -> DemoCorpusPaths:
    return DemoCorpusPaths(
        root, root / "images", root / KARPATHY_NAME, root / BOXES_NAME, root / META_NAME, counts
    )


def build_demo_corpus(
    out_dir: str | Path,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    seed: int = 0,
    *,
    image_size: int = 256,
    distractor_fraction: float = 0.5,
    force: bool = False,
) -> DemoCorpusPaths:
    """Render the corpus into `out_dir` (images/, dataset_demo.json, boxes_demo.json, corpus.json).

    Cached: when `out_dir` already holds a corpus built with the same parameters, nothing is redone. The
    metadata file is written last, so an interrupted build is rebuilt rather than trusted.
    """
    if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test == 0:
        raise ValueError("split sizes must be >= 0 and not all 0")
    if image_size < 64:
        raise ValueError("image_size must be >= 64")
    if not 0.0 <= distractor_fraction <= 1.0:
        raise ValueError("distractor_fraction must be in [0, 1]")
    root = Path(out_dir)
    params = _params(num_train, num_val, num_test, seed, image_size, distractor_fraction)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    paths = _paths(root, counts)
    if not force and paths.meta_json.is_file():
        try:
            meta = json.loads(paths.meta_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
        ready = meta.get("params") == params and paths.karpathy_json.is_file() and paths.boxes_json.is_file()
        if ready and all((paths.images_dir / f).is_file() for f in meta.get("files", [])):
            return paths
    if paths.meta_json.exists():
        paths.meta_json.unlink()
    paths.images_dir.mkdir(parents=True, exist_ok=True)
    for stale in paths.images_dir.glob("demo_*.png"):  # a smaller rebuild must not leave old images behind
        if re.fullmatch(r"demo_\d{6}\.png", stale.name):
            stale.unlink()

    karpathy: list[dict[str, Any]] = []
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    files: list[str] = []
    imgid = 0
    plans = {s: _plan(n, s, seed, image_size, distractor_fraction) for s, n in counts.items()}
    pair_ids: dict[tuple[str, int], list[int]] = {}
    for split, plan in plans.items():
        for entry in plan:
            objs: list[SceneObject] = entry["objects"]
            split_, k, part = entry["key"]
            img = render_scene(objs, image_size, _seed(seed, split_, "render", k, part))
            filename = f"demo_{imgid:06d}.png"
            img.save(paths.images_dir / filename, compress_level=1)
            files.append(filename)
            rng = random.Random(_seed(seed, split_, "captions", k, part))
            caps = _captions(objs, image_size, rng, entry["focus"])
            sentids = [imgid * 5 + s for s in range(5)]
            if entry["distractor"] is not None:
                pair_ids.setdefault((split_, k), []).append(imgid)
            karpathy.append(
                {
                    "filename": filename,
                    "filepath": "images",
                    "imgid": imgid,
                    "split": split,
                    "sentences": [
                        {"raw": c, "tokens": tokenize(c), "sentid": sid, "imgid": imgid}
                        for c, sid in zip(caps, sentids, strict=True)
                    ],
                    "sentids": sentids,
                    "distractor": entry["distractor"],
                    "objects": [asdict(o) for o in objs],
                }
            )
            coco_images.append(
                {"id": imgid, "file_name": filename, "width": image_size, "height": image_size}
            )
            for o in objs:
                x1, y1, x2, y2 = o.box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": imgid,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "category_id": CLASSES.index(o.cls) + 1,
                        "attributes": {"color": o.color, "size": o.size},
                    }
                )
            imgid += 1
    by_id = {e["imgid"]: e for e in karpathy}
    for ids in pair_ids.values():
        for a in ids:
            by_id[a]["pair"] = next(b for b in ids if b != a)
    for e in karpathy:
        e.setdefault("pair", None)

    paths.karpathy_json.write_text(json.dumps({"dataset": "demo", "images": karpathy}), encoding="utf-8")
    coco = {
        "info": {"description": "imagebert demo corpus", "version": CORPUS_VERSION},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)],
    }
    paths.boxes_json.write_text(json.dumps(coco), encoding="utf-8")
    paths.meta_json.write_text(json.dumps({"params": params, "files": files}, indent=1), encoding="utf-8")
    return paths
