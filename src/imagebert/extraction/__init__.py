"""Region-feature extraction from raw images: RoIAlign in plain torch over a pre-trained CNN, into the store.

Heavy modules (torch, the backbone) load lazily so that `imagebert --help` stays fast.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "roi_align": "imagebert.extraction.roi_align",
    "roi_align_mean": "imagebert.extraction.roi_align",
    "EfficientNetLite0Backbone": "imagebert.extraction.backbone",
    "load_backbone": "imagebert.extraction.backbone",
    "register_backbone": "imagebert.extraction.backbone",
    "load_rgb_image": "imagebert.extraction.images",
    "ImageRejected": "imagebert.extraction.images",
    "BoxFile": "imagebert.extraction.boxes",
    "Detections": "imagebert.extraction.boxes",
    "Detector": "imagebert.extraction.boxes",
    "grid_boxes": "imagebert.extraction.boxes",
    "load_box_file": "imagebert.extraction.boxes",
    "ExtractionConfig": "imagebert.extraction.extract",
    "ExtractionReport": "imagebert.extraction.extract",
    "extract": "imagebert.extraction.extract",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("imagebert.extraction", _LAZY)
