"""Writers for the public feature and caption layouts, used to build fixtures in tmp_path."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np

BUTD_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
LXMERT_FIELDS = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
                 "boxes", "features"]  # fmt: skip


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def make_image(image_id: str, n: int = 12, d: int = 32, seed: int = 0, w: int = 640, h: int = 480) -> dict:
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, w / 2, n)
    y1 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1).astype(
        np.float32
    )
    return {
        "image_id": image_id, "w": w, "h": h, "boxes": boxes,
        "features": rng.standard_normal((n, d)).astype(np.float32) * 3,
        "objects_id": rng.integers(0, 1600, n).astype(np.int64),
        "objects_conf": rng.uniform(0, 1, n).astype(np.float32),
        "attrs_id": rng.integers(0, 400, n).astype(np.int64),
        "attrs_conf": rng.uniform(0, 1, n).astype(np.float32),
        "soft_labels": rng.dirichlet(np.ones(1601), n).astype(np.float32),
    }  # fmt: skip


def butd_row(img: dict) -> dict:
    return {
        "image_id": img["image_id"], "image_w": img["w"], "image_h": img["h"], "num_boxes": len(img["boxes"]),
        "boxes": b64(img["boxes"]), "features": b64(img["features"]),
    }  # fmt: skip


def lxmert_row(img: dict) -> dict:
    return {
        "img_id": img["image_id"], "img_h": img["h"], "img_w": img["w"], "objects_id": b64(img["objects_id"]),
        "objects_conf": b64(img["objects_conf"]), "attrs_id": b64(img["attrs_id"]),
        "attrs_conf": b64(img["attrs_conf"]), "num_boxes": len(img["boxes"]), "boxes": b64(img["boxes"]),
        "features": b64(img["features"]),
    }  # fmt: skip


def write_tsv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    """As generate_tsv.py does: csv.DictWriter, tab delimiter, no header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, delimiter="\t", fieldnames=fields)
        for row in rows:
            writer.writerow(row)
    return path


def write_npz_butd(folder: Path, img: dict, **overrides) -> Path:
    """bottom-up-attention.pytorch extract_features: np.savez_compressed with a pickled `info` dict."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"objects_id": img["objects_id"], "objects_conf": img["objects_conf"], "attrs_id": img["attrs_id"],
            "attrs_conf": img["attrs_conf"]}  # fmt: skip
    arrays = dict(x=img["features"], bbox=img["boxes"], num_bbox=len(img["boxes"]), image_h=img["h"],
                  image_w=img["w"], info=info)  # fmt: skip
    arrays.update(overrides)
    path = folder / f"{img['image_id']}.npz"
    np.savez_compressed(path, **arrays)
    return path


def write_npz_uniter(folder: Path, img: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w, h, b = img["w"], img["h"], img["boxes"]
    norm = np.concatenate(
        [b / [w, h, w, h], ((b[:, 2] - b[:, 0]) / w)[:, None], ((b[:, 3] - b[:, 1]) / h)[:, None]], 1
    )
    path = folder / f"{img['image_id']}.npz"
    np.savez_compressed(path, features=img["features"].astype(np.float16), norm_bb=norm.astype(np.float32),
                        conf=img["soft_labels"][:, 1:].max(1), soft_labels=img["soft_labels"].astype(np.float16))  # fmt: skip
    return path


def write_hdf5(path: Path, imgs: list[dict]) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for img in imgs:
            g = f.create_group(img["image_id"])
            g.create_dataset("features", data=img["features"])
            g.create_dataset("boxes", data=img["boxes"])
            g.create_dataset("class_ids", data=img["objects_id"])
            g.create_dataset("class_confidences", data=img["objects_conf"])
            g.attrs["image_w"] = img["w"]
            g.attrs["image_h"] = img["h"]
    return path


def write_karpathy(path: Path, dataset: str, images: list[tuple[str, str, int]]) -> Path:
    """images: (name, split, n_sentences). COCO entries get cocoid and filepath, as dataset_coco.json has."""
    out, sentid = [], 0
    for imgid, (name, split, n) in enumerate(images):
        sents = []
        for j in range(n):
            raw = f"A photo number {j} of image {name}."
            sents.append(
                {"tokens": raw.lower().strip(".").split(), "raw": raw, "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        entry = {"filename": name, "imgid": imgid, "split": split, "sentences": sents,
                 "sentids": [s["sentid"] for s in sents]}  # fmt: skip
        if dataset == "coco":
            entry["filepath"] = "val2014" if split != "train" else "train2014"
            entry["cocoid"] = int(name.rsplit("_", 1)[1].split(".")[0])
        out.append(entry)
    path.write_text(json.dumps({"images": out, "dataset": dataset}))
    return path
