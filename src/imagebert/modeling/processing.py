"""ImageBertProcessor: raw captions and region records -> the model's inputs, saved and loaded with the model.

One object replaces the tokenizer + `PairCollator(tok, max_text_tokens=..., max_regions=..., feature_dim=...)`
that every entry point used to build by hand (with sizes copied from the model config, which is how they
drifted). It is a transformers `ProcessorMixin` with a single tokenizer attribute, so `save_pretrained(dir)`
writes `processor_config.json` next to the tokenizer files and `from_pretrained(dir)` (or `AutoProcessor`)
reads them back. The batching itself is `imagebert.data.collate.PairCollator`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import BatchFeature, ProcessorMixin

from imagebert.data.collate import MODEL_INPUT_KEYS, PairCollator
from imagebert.data.types import RegionRecord

PROCESSOR_CONFIG = "processor_config.json"


class ImageBertProcessor(ProcessorMixin):
    """Tokenizer + region padding with the sizes of one model.

    `processor(text=[...], regions=[RegionRecord, ...])` returns a `BatchFeature` holding exactly the keyword
    arguments of the model's forward (`input_ids`, `attention_mask`, `region_features`, `region_locations`
    (the paper's 5-d boxes), `region_mask`); either modality may be left out. `return_extras=True` adds the
    collator's bookkeeping (`region_class_ids`, `region_boxes`, `image_ids`, ...), which pre-training needs
    for its labels. `encode_text`, `encode_regions` and `collate(pairs)` keep the PairCollator interface the
    scorers use.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer: Any,
        max_text_tokens: int = 43,
        max_regions: int = 100,
        feature_dim: int = 2048,
        truncate_regions: bool = True,
        **kwargs: Any,
    ) -> None:
        self.max_text_tokens = int(max_text_tokens)
        self.max_regions = int(max_regions)
        self.feature_dim = int(feature_dim)
        # True: an image with more boxes than max_regions keeps its first ones (training, evaluation); False
        # raises.
        self.truncate_regions = bool(truncate_regions)
        super().__init__(tokenizer, **kwargs)

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, **kwargs: Any) -> ImageBertProcessor:
        """Sizes from a model config (ImageBertConfig or its dict), so processor and model cannot disagree."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        return cls(
            tokenizer,
            max_text_tokens=get("max_text_tokens", 43),
            max_regions=get("max_regions", 100),
            feature_dim=get("visual_feature_dim", 2048),
            **kwargs,
        )

    @classmethod
    def from_checkpoint(cls, folder: str | Path, config: Any = None) -> ImageBertProcessor:
        """The processor saved in a checkpoint folder; for an older checkpoint without one, built from its
        config.json and its tokenizer files (or the default MiniLM tokenizer when it has none)."""
        from imagebert.modeling.inputs import load_tokenizer

        folder = Path(folder)
        if (folder / PROCESSOR_CONFIG).is_file():
            return cls.from_pretrained(str(folder))
        if config is None:
            config_file = folder / "config.json"
            if not config_file.is_file():
                raise FileNotFoundError(
                    f"{folder}: no {PROCESSOR_CONFIG} and no config.json to build one from"
                )
            config = json.loads(config_file.read_text(encoding="utf-8"))
        has_vocab = (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()
        return cls.from_config(config, load_tokenizer(folder if has_vocab else None))

    def check_model(self, config: Any) -> None:
        """Raise when this processor's sizes do not fit a model config (a processor saved with another
        model)."""
        wrong = [
            f"{mine}={getattr(self, mine)} vs {theirs}={getattr(config, theirs)}"
            for mine, theirs in (
                ("feature_dim", "visual_feature_dim"),
                ("max_regions", "max_regions"),
                ("max_text_tokens", "max_text_tokens"),
            )
            if getattr(self, mine) != getattr(config, theirs)
        ]
        if wrong:
            raise ValueError(f"processor and model disagree: {', '.join(wrong)}")

    # --------------------------------------------------------------------------------------------- batching
    @property
    def collator(self) -> PairCollator:
        """A PairCollator with these sizes (made per call: it is a few attributes, and keeping one would make
        the processor's serialisation deep-copy the tokenizer)."""
        return PairCollator(
            self.tokenizer,
            max_text_tokens=self.max_text_tokens,
            max_regions=self.max_regions,
            feature_dim=self.feature_dim,
            truncate_regions=self.truncate_regions,
        )

    def encode_text(self, texts: Sequence[str]) -> dict[str, Any]:
        return self.collator.encode_text(texts)

    def encode_regions(self, records: Sequence[RegionRecord]) -> dict[str, Any]:
        return self.collator.encode_regions(records)

    def collate(self, pairs: Sequence[tuple[RegionRecord, str]]) -> dict[str, Any]:
        """`(RegionRecord, caption)` pairs -> one batch with every collator key (PairCollator's __call__)."""
        return self.collator(pairs)

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[tuple[RegionRecord, str]] | None = None,
        regions: RegionRecord | Sequence[RegionRecord] | None = None,
        *,
        return_extras: bool = False,
        **kwargs: Any,
    ) -> BatchFeature | dict[str, Any]:
        """Model inputs for captions and/or images (row i of one pairs with row i of the other).

        For the PairCollator interface, a list of `(RegionRecord, caption)` tuples as the only argument
        returns `collate(pairs)`.
        """
        if kwargs:
            raise TypeError(f"ImageBertProcessor: unexpected argument(s) {', '.join(sorted(kwargs))}")
        if regions is None and isinstance(text, list | tuple) and text and isinstance(text[0], tuple):
            return self.collate(text)
        if text is None and regions is None:
            raise ValueError("ImageBertProcessor: give text, regions, or both")
        if isinstance(text, str):
            text = [text]
        if isinstance(regions, RegionRecord):
            regions = [regions]
        if text is not None and regions is not None and len(text) != len(regions):
            raise ValueError(f"ImageBertProcessor: {len(text)} texts but {len(regions)} region records")
        data: dict[str, Any] = {}
        if regions is not None:
            data.update(self.encode_regions(regions))
        if text is not None:
            data.update(self.encode_text(text))
        if not return_extras:
            data = {k: data[k] for k in MODEL_INPUT_KEYS if k in data}
        return BatchFeature(data=data)
