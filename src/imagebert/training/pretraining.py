"""Deprecated location (one release): pre-training moved to `imagebert.tasks.pretraining`."""

from __future__ import annotations

import sys
import warnings

from imagebert.tasks import pretraining as _moved

warnings.warn(
    "imagebert.training.pretraining moved to imagebert.tasks.pretraining; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
