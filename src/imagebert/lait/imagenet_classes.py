"""The 1,000 ImageNet-1k class names in the standard class-index order (index i = output i of the classifier).

The names live in the data file `imagenet_classes.txt` beside this module (one name per line, line i = class i),
written for this project as plain facts (one short common name per class), so the EfficientNet-Lite0 predictions
can be turned into words without downloading a label file. Spot-checked against well-known indices (0 tench,
207 golden retriever, 281 tabby cat, 340 zebra, 504 coffee mug, 817 sports car, 967 espresso, 999 toilet paper).
The file is read through `importlib.resources`, so it works from a wheel or zip as well as from a source tree.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

__all__ = ["IMAGENET_CLASSES", "load_imagenet_classes"]

DATA_FILE = "imagenet_classes.txt"
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def load_imagenet_classes() -> tuple[str, ...]:
    """The class names, read once; a file with the wrong number of names is an installation error."""
    text = resources.files("imagebert.lait").joinpath(DATA_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise RuntimeError(
            f"imagebert/lait/{DATA_FILE}: {len(names)} class names, expected {NUM_CLASSES} (a broken install?)"
        )
    return names


IMAGENET_CLASSES: tuple[str, ...] = load_imagenet_classes()
