"""The paper's Tables 1 and 2 (spec section 7), so our results print beside the rows they reproduce.

Each row: IR R@1, R@5, R@10 (caption -> image), then TR R@1, R@5, R@10 (image -> caption), in percent.
"""

from __future__ import annotations

Row = tuple[float | None, float | None, float | None, float | None, float | None, float | None]

_ = None
PAPER_ROWS: dict[str, dict[str, dict[str, Row]]] = {
    "zero-shot": {
        "flickr1k": {
            "ViLBERT": (31.9, 61.1, 72.8, _, _, _),
            "Unicoder-VL": (48.4, 76.0, 85.2, 64.3, 85.8, 92.3),
            "UNITER": (62.3, 85.6, 91.5, 75.1, 93.7, 95.5),
            "ImageBERT": (54.3, 79.6, 87.5, 70.7, 90.2, 94.0),
        },
        "coco1k": {
            "Unicoder-VL": (43.4, 76.0, 87.0, 54.4, 82.8, 90.6),
            "ImageBERT": (53.6, 83.2, 91.7, 67.0, 90.3, 96.1),
        },
        "coco5k": {
            "ImageBERT": (32.3, 59.0, 70.2, 44.0, 71.2, 80.4),
        },
    },
    "fine-tuned": {
        "flickr1k": {
            "SCAN": (48.6, 77.7, 85.2, 67.4, 90.3, 95.8),
            "SCG": (49.3, 76.4, 85.6, 71.8, 90.8, 94.8),
            "PFAN": (50.4, 78.7, 86.1, 70.0, 91.8, 95.0),
            "ViLBERT": (58.2, 84.9, 91.5, _, _, _),
            "UNITER": (71.5, 91.2, 95.2, 84.7, 97.1, 99.0),
            "Unicoder-VL": (71.5, 90.9, 94.9, 86.2, 96.3, 99.0),
            "ImageBERT": (73.1, 92.6, 96.0, 87.0, 97.6, 99.2),
        },
        "coco1k": {
            "SCAN": (58.8, 88.4, 94.8, 72.7, 94.8, 98.4),
            "SCG": (61.4, 88.9, 95.1, 76.6, 96.3, 99.2),
            "PFAN": (61.6, 89.6, 95.2, 76.5, 96.3, 99.0),
            "Unicoder-VL": (69.7, 93.5, 97.2, 84.3, 97.3, 99.3),
            "ImageBERT": (73.6, 94.3, 97.2, 85.4, 98.7, 99.8),
        },
        "coco5k": {
            "SCAN": (38.6, 69.3, 80.4, 50.4, 82.2, 90.0),
            "Unicoder-VL": (46.7, 76.0, 85.3, 62.3, 87.1, 92.8),
            "UNITER": (48.4, 76.7, 85.9, 63.3, 87.0, 93.1),
            "ImageBERT": (50.5, 78.7, 87.1, 66.4, 89.8, 94.4),
        },
    },
}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def markdown_table(protocol: str, setting: str, ours: dict[str, dict]) -> str:
    """A table for one protocol: the paper's rows for `setting`, then ours (label -> RecallResult.to_dict())."""
    head = (
        "| Method | IR R@1 | R@5 | R@10 | TR R@1 | R@5 | R@10 | RSUM |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, row in PAPER_ROWS.get(setting, {}).get(protocol, {}).items():
        rsum = sum(row) if all(v is not None for v in row) else None
        lines.append(f"| {name} (paper) | " + " | ".join(_fmt(v) for v in row) + f" | {_fmt(rsum)} |")
    for label, res in ours.items():
        ir, tr = res["image_retrieval"], res["text_retrieval"]
        vals = [ir.get("R@1"), ir.get("R@5"), ir.get("R@10"), tr.get("R@1"), tr.get("R@5"), tr.get("R@10")]
        lines.append(f"| **{label}** | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(res['rsum'])} |")
    return head + "\n".join(lines) + "\n"
