"""ImageBertConfig: every BERT field plus the region-side sizes and the choices the paper leaves open.

Fields the paper does not state are marked UNCONFIRMED below; their defaults are the spec's best guess and each
is documented in docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from imagebert.modeling.tasks import LEGACY_TRAINING_SWITCHES, warn_legacy_switches

# Keys a BERT checkpoint's config.json may carry that are bookkeeping rather than model settings.
_BOOKKEEPING_KEYS = {
    "architectures",
    "transformers_version",
    "_name_or_path",
    "name_or_path",  # AutoConfig.from_pretrained passes it
    "attn_implementation",  # from_pretrained(..., attn_implementation="eager")
    "output_attentions",  # a property of PretrainedConfig (to_dict writes it)
    "model_type",
    "torch_dtype",
    "gradient_checkpointing",
    "position_embedding_type",
    "num_labels",
    "_attn_implementation_autoset",
}

# Of those, the ones PretrainedConfig itself acts on.
_PASSED_ON = {"torch_dtype", "num_labels", "name_or_path", "attn_implementation", "output_attentions"}


@strict
class ImageBertConfig(BertConfig):
    """Configuration of an ImageBERT model.

    The text sequence handed to the model is a standard tokenizer output `[CLS] w_1..w_m [SEP]` of at most
    `max_text_tokens` ids; the model inserts `r_1..r_R [SEP]` after `[CLS]`, so the longest joint sequence is
    `max_regions + max_text_tokens + 1` (100 + 43 + 1 = 144 as in the paper).
    """

    model_type = "imagebert"

    visual_feature_dim: int = 2048
    location_dim: int = 5
    num_object_classes: int = 1600
    max_regions: int = 100
    max_text_tokens: int = 43
    cls_token_id: int = 101
    sep_token_id: int = 102
    # UNCONFIRMED: whether the two region projections carry a bias.
    visual_projection_bias: bool = True
    # Beyond the paper (see docs/training.md, "Why ITM did not learn"): how raw region features are normalised
    # before the projection. "standardize" subtracts a per-dimension mean and divides by a per-dimension std that
    # are measured on the training store and saved with the model (buffers `region_feature_mean/std`), so features
    # of any scale and any shared offset (bottom-up-attention's 2048-d ReLU features, EfficientNet's 1280-d ones)
    # reach the encoder alike; "none" feeds them raw (the paper's text). An all-zero row (a masked region) stays 0.
    region_feature_norm: str = "standardize"
    # Beyond the paper (UNITER's choice): a LayerNorm after each region projection (feature, location), so the
    # region embeddings enter BERT's embedding LayerNorm at the scale of word embeddings.
    region_embedding_layernorm: bool = True
    # UNCONFIRMED: ITM reads BERT's pooler (dense + tanh on [CLS]) like NSP, rather than the raw [CLS] vector.
    itm_use_pooler: bool = True
    # Beyond the paper: the ITM head also reads the product of the joint pass's mean word and mean region states
    # (see ImageBertForPreTraining's ITM readout and docs/training.md); false = the paper's head.
    itm_match_features: bool = True
    # UNCONFIRMED: MRFR squared error averaged over feature dimensions ("mean") or summed ("sum").
    mrfr_reduction: str = "mean"
    itc_dim: int = 256
    itc_temperature: float = 0.07
    # Bookkeeping: optimizer steps in which the contrastive projections received a loss (pre-training with
    # tasks.itc, or fine-tuning with loss.itc > 0). 0 means they are untrained and fast retrieval refuses them.
    itc_trained_steps: int = 0

    def __post_init__(self, **kwargs: Any) -> None:
        # Training switches (task_*, loss_weight_*, validate_inputs) used to live here; they now belong to the
        # pre-training config. Configs and checkpoints that still carry them keep working for one release: the
        # values are held aside (not saved again) and become the model's default tasks.
        legacy = {k: kwargs.pop(k) for k in list(kwargs) if k in LEGACY_TRAINING_SWITCHES}
        if legacy:
            warn_legacy_switches(legacy, "ImageBertConfig")
        object.__setattr__(self, "_legacy_switches", legacy)
        unknown = sorted(k for k in kwargs if k not in _BOOKKEEPING_KEYS)
        if unknown:
            raise ValueError(
                f"ImageBertConfig: unknown config key(s) {', '.join(repr(k) for k in unknown)}; "
                "see imagebert.ImageBertConfig for the valid fields"
            )
        pet = kwargs.get("position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(
                f"ImageBertConfig: position_embedding_type={pet!r} is not supported (only 'absolute')"
            )
        if self.mrfr_reduction not in ("mean", "sum"):
            raise ValueError(
                f"ImageBertConfig: mrfr_reduction must be 'mean' or 'sum', got {self.mrfr_reduction!r}"
            )
        if self.region_feature_norm not in ("none", "standardize"):
            raise ValueError(
                "ImageBertConfig: region_feature_norm must be 'none' or 'standardize', "
                f"got {self.region_feature_norm!r}"
            )
        if self.location_dim != 5:
            raise ValueError(
                "ImageBertConfig: location_dim must be 5 (x1/W, y1/H, x2/W, y2/H, area fraction)"
            )
        if self.max_text_tokens + 2 > self.max_position_embeddings:
            raise ValueError(
                f"ImageBertConfig: max_text_tokens={self.max_text_tokens} needs max_position_embeddings >= "
                f"{self.max_text_tokens + 2} (text positions start at 3)"
            )
        kwargs = {k: v for k, v in kwargs.items() if k not in _BOOKKEEPING_KEYS or k in _PASSED_ON}
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_legacy_switches", None)  # deprecated training switches are read, never written back
        return out

    @property
    def legacy_training_switches(self) -> dict[str, Any]:
        """Deprecated `task_*` / `loss_weight_*` / `validate_inputs` keys this config was built with."""
        return dict(getattr(self, "_legacy_switches", {}) or {})

    @classmethod
    def from_bert_checkpoint(cls, path: str | Any, **overrides: Any) -> ImageBertConfig:
        """Take the BERT fields from a checkpoint folder's config.json; `overrides` set ours (or replace theirs)."""
        import json
        from pathlib import Path

        config_path = Path(path) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no config.json in the BERT checkpoint folder")
        bert = json.loads(config_path.read_text(encoding="utf-8"))
        bert_fields = set(BertConfig.__dataclass_fields__) - {"model_type"}
        kept = {k: v for k, v in bert.items() if k in bert_fields}
        kept.update(overrides)
        return cls(**kept)
