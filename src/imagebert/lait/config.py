"""LAIT pipeline settings: every threshold lives here, so a run is reproducible from its YAML alone.

The paper (section 3) gives the 300 px rule and nothing else; all other defaults below are our choices and are
documented in docs/lait.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from imagebert.config_utils import ConfigError, load_config, meta, to_dict


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
    # Off by default: measured on real photographs the skin-tone rule rejects cats, coffee on wood, warm-lit
    # interiors and stained tissue (docs/lait.md). "heuristic" turns it back on; "package.module:factory" = yours.
    racy_classifier: str = "none"  # "none", "heuristic", or "package.module:factory"
    # "learned" = the shipped photo / non-photo model (EfficientNet-Lite0 features + colour statistics);
    # "heuristic" = the old palette/flat/edge rules; "none"; or "package.module:factory".
    type_classifier: str = "learned"
    # weights from `lait train-photo-classifier`; None = the shipped ones (a path: relative to the YAML's folder)
    photo_model: str | None = field(default=None, metadata=meta(path=True))
    photo_threshold: float | None = None  # P(photo) to keep; None = the threshold stored in the weights file
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
    # None = the shipped scorer trained by `lait train-default-scorer`; "hand" = the documented hand-set
    # weights; "file.safetensors" = a trained scorer; "package.module:factory" = your own.
    model: str | None = None
    neural: bool = False  # ImageNet labels (EfficientNet-Lite0) vs caption through MiniLM
    # None = the threshold stored in the scorer file (chosen by train-scorer for target_precision; 0.5 for the
    # hand-set weights); a number overrides it.
    min_score: float | None = None
    target_precision: float = 0.9  # train-scorer picks the lowest threshold reaching this held-out precision
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
    pages_per_task: int = 400  # a WARC is split into record ranges of this many pages; small files are packed
    examples_per_reason: int = 3
    # A step that drops more than this share of what enters it (with at least `warn_min_in` in) is reported
    # loudly at the end of the run (stderr and funnel.md).
    warn_drop_share: float = 0.9
    warn_min_in: int = 20
    # Bytes skipped while resynchronising a WARC (garbage, corrupt members): with strict_input the CLI exits
    # with code 3 after writing the output; otherwise it only warns.
    strict_input: bool = True


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

    def validate(self) -> None:
        """Plug-in names, weight files and value ranges, checked before any work (and by `lait show-config`);
        called by load_config."""
        _check_plugin("images.racy_classifier", self.images.racy_classifier, BUILTIN_RACY)
        _check_plugin("images.type_classifier", self.images.type_classifier, BUILTIN_TYPE)
        if self.images.photo_model is not None and not Path(self.images.photo_model).is_file():
            raise ConfigError(f"images.photo_model: file not found: {self.images.photo_model}")
        model = self.scoring.model
        if model not in (None, "hand"):
            if ":" in model and not Path(model).exists():
                _check_plugin("scoring.model", model, ())
            elif not Path(model).is_file():
                raise ConfigError(
                    f"scoring.model: file not found: {model} (or use 'package.module:factory', 'hand')"
                )
        for key, value in (
            ("images.photo_threshold", self.images.photo_threshold),
            ("scoring.min_score", self.scoring.min_score),
            ("scoring.target_precision", self.scoring.target_precision),
            ("run.warn_drop_share", self.run.warn_drop_share),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}: must be between 0 and 1, got {value}")
        if self.run.pages_per_task < 1:
            raise ConfigError(f"run.pages_per_task: must be >= 1, got {self.run.pages_per_task}")


BUILTIN_RACY = ("none", "heuristic")
BUILTIN_TYPE = ("none", "heuristic", "learned")


def _check_plugin(key: str, spec: str, builtin: tuple[str, ...]) -> None:
    if spec in builtin:
        return
    if ":" not in spec:
        raise ConfigError(
            f"{key}: unknown classifier {spec!r}; use one of {', '.join(builtin)} or 'package.module:factory'"
        )
    mod, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(mod)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config error naming the key
        raise ConfigError(f"{key}: cannot import {mod!r} ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(module, attr, None)):
        raise ConfigError(f"{key}: {mod!r} has no callable {attr!r}")


def validate_lait_config(cfg: LaitConfig) -> LaitConfig:
    """Deprecated alias of LaitConfig.validate (returns `cfg`)."""
    cfg.validate()
    return cfg


def load_lait_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LaitConfig:
    """YAML (optional) + `--set` overrides -> LaitConfig; unknown keys and unknown plug-ins raise ConfigError
    naming the key."""
    return load_config(LaitConfig, path, overrides)  # runs LaitConfig.validate
