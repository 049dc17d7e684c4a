"""LAIT: weak-supervision pipeline from raw web crawls (WARC / HTML) to clean image-text pairs (paper section 3).

The exports load on first use: every `imagebert` command builds the `lait` subcommand's parser, and importing the
pipeline (WARC reader, fsspec) up front cost each of them about 0.1 s for nothing (`imagebert --help` 0.25 -> 0.15 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagebert._lazy import lazy_getattr

if TYPE_CHECKING:
    from imagebert.lait.config import LaitConfig, load_lait_config
    from imagebert.lait.funnel import Funnel
    from imagebert.lait.pipeline import LaitRunError, run_lait
    from imagebert.lait.scoring import Scorer

_LAZY = {
    "LaitConfig": "imagebert.lait.config",
    "load_lait_config": "imagebert.lait.config",
    "Funnel": "imagebert.lait.funnel",
    "LaitRunError": "imagebert.lait.pipeline",
    "run_lait": "imagebert.lait.pipeline",
    "Scorer": "imagebert.lait.scoring",
}

__getattr__ = lazy_getattr("imagebert.lait", _LAZY)

__all__ = ["Funnel", "LaitConfig", "LaitRunError", "Scorer", "load_lait_config", "run_lait"]
