"""ImageBERT: cross-modal pre-training with large-scale weak-supervised image-text data.

The model classes are imported lazily so that light tools (data import, LAIT workers) do not pay for torch and
transformers at start-up.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr
from imagebert.runtime.noise import install_log_filters

install_log_filters()  # before transformers or torch.compile can import torchao

__version__ = "0.1.0"

_LAZY = {
    "ImageBertConfig": "imagebert.modeling.configuration",
    "ImageBertModel": "imagebert.modeling.model",
    "ImageBertForPreTraining": "imagebert.modeling.model",
    "ImageBertForRetrieval": "imagebert.modeling.model",
}

__all__ = [*_LAZY, "__version__"]


__getattr__ = lazy_getattr("imagebert", _LAZY)
