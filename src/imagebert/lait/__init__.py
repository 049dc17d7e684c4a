"""LAIT: weak-supervision pipeline from raw web crawls (WARC / HTML) to clean image-text pairs (paper section 3)."""

from imagebert.lait.config import LaitConfig, load_lait_config
from imagebert.lait.funnel import Funnel
from imagebert.lait.pipeline import LaitRunError, run_lait
from imagebert.lait.scoring import Scorer

__all__ = ["Funnel", "LaitConfig", "LaitRunError", "Scorer", "load_lait_config", "run_lait"]
