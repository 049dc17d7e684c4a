"""LAIT pipeline settings: every threshold lives here, so a run is reproducible from its YAML alone.

The paper (section 3) gives the 300 px rule and nothing else; all other defaults below are our choices and are
documented in docs/lait.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imagebert.config_utils import load_config, to_dict


@dataclass
class PageConfig:
    language: str = "en"
    min_language_score: float = 0.5
    min_text_chars: int = 40
    max_text_chars_for_langid: int = 2000
    max_html_bytes: int = 5_000_000
    max_images_per_page: int = 500
    min_dominant_score: float = 0.0
    surrounding_max_chars: int = 300  # a text block longer than this is page prose, not the image's context


@dataclass
class ImageConfig:
    min_side: int = 300  # paper: width and height both larger than 300 px
    max_aspect: float = 3.0
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000  # Pillow decompression-bomb limit, set explicitly
    jpeg_quality: int = 90
    racy_classifier: str = "heuristic"  # "heuristic", "none", or "package.module:factory"
    type_classifier: str = "heuristic"
    skin_ratio_threshold: float = 0.5
    min_palette_colors: int = 200
    max_flat_fraction: float = 0.55
    max_edge_density: float = 0.35
    mirror_dir: str | None = None


@dataclass
class FetchConfig:
    enabled: bool = False
    timeout_s: float = 10.0
    max_bytes: int = 20_000_000
    retries: int = 2
    backoff_s: float = 0.5
    max_concurrency: int = 8
    per_host_delay_s: float = 1.0
    user_agent: str = "imagebert-lait/0.1 (+research crawler)"


@dataclass
class TextConfig:
    min_words: int = 3
    max_words: int = 40
    min_chars: int = 10
    max_chars: int = 300
    max_oov_ratio: float = 0.3
    min_zipf_frequency: float = 1.0
    banned_words: list[str] = field(
        default_factory=lambda: ["porn", "xxx", "nude", "nudes", "sex", "sexy", "casino", "viagra", "escort"]
    )
    boilerplate_patterns: list[str] = field(
        default_factory=lambda: [
            r"\bimage may contain\b",
            r"\bno (image|description|photo) available\b",
            r"\bplaceholder\b",
            r"^(untitled|image|photo|picture|thumbnail|logo|banner|icon)( \d+)?$",
            r"\ball rights reserved\b",
            r"\bcopyright\b|©",
            r"\bstock (photo|image)s?\b",
            r"\b(click|tap) (here|to (enlarge|zoom|view))\b",
        ]
    )
    spam_patterns: list[str] = field(
        default_factory=lambda: [
            r"https?://|www\.",
            r"\b(buy|order|shop) now\b",
            r"\bfree shipping\b",
            r"\b(discount|coupon|promo code)\b",
            r"(.)\1{4,}",
            r"[!?]{2,}",
            r"\S+@\S+\.\w+",
        ]
    )
    sources: list[str] = field(default_factory=lambda: ["alt", "title", "og_description", "surrounding"])


@dataclass
class ScoringConfig:
    # None = the documented default weights; "file.safetensors" = a trained scorer (`lait train-scorer`);
    # "package.module:factory" = your own: factory(LaitConfig) -> object with .score(features, text, image) -> float
    model: str | None = None
    neural: bool = False  # ImageNet labels (EfficientNet-Lite0) vs caption through MiniLM
    min_score: float = 0.5
    top_labels: int = 5
    device: str = "cpu"


@dataclass
class AggregationConfig:
    dhash_max_distance: int = 4
    max_images_per_description: int = 3  # T: a description on more than T distinct images is dropped


@dataclass
class RunConfig:
    workers: int = 2
    retries: int = 1  # Dask re-runs a shard whose worker died; atomic commits make that safe
    html_files_per_shard: int = 200
    examples_per_reason: int = 3


@dataclass
class LaitConfig:
    pages: PageConfig = field(default_factory=PageConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    text: TextConfig = field(default_factory=TextConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def load_lait_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LaitConfig:
    """YAML (optional) + `--set` overrides -> LaitConfig; unknown keys raise ConfigError naming the key."""
    return load_config(LaitConfig, path, overrides)
