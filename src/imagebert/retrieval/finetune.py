"""Deprecated location (one release): retrieval fine-tuning moved to `imagebert.tasks.retrieval`."""

from __future__ import annotations

import sys
import warnings

from imagebert.tasks import retrieval as _moved

warnings.warn(
    "imagebert.retrieval.finetune moved to imagebert.tasks.retrieval; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
