"""ImageBERT: one BERT encoder over `[CLS] regions [SEP] words [SEP]`, with the paper's four pre-training heads.

The encoder, embeddings and pooler are transformers' own BERT modules (SDPA attention); ImageBERT adds the
region projections, the sequence assembly, and the heads. The models follow the Hugging Face layout of BERT:
the encoder sits under `bert.` (`base_model_prefix = "bert"`) with BertModel's module names and the MLM head
is `cls.predictions` (BertForPreTraining's), so `from_pretrained(bert_folder)` maps a BERT checkpoint's
weights by itself; only the region-side layers and the ImageBERT heads start new. Checkpoints written before
this layout (`imagebert.*`, `mlm_head.*`) are renamed on load for one release.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertPooler,
)
from transformers.utils import ModelOutput

from imagebert.modeling.configuration import ImageBertConfig
from imagebert.modeling.heads import RegionHeads, ScoreHead, contrastive_loss_from_log_scale
from imagebert.modeling.tasks import TASK_NAMES, PretrainingTasks
from imagebert.runtime.compile import bucket

log = logging.getLogger(__name__)

REGION_POSITION_ID = 1  # every region shares this "dummy" sequence position (paper Fig. 4)
IMAGE_SEP_POSITION_ID = 2
TEXT_POSITION_OFFSET = 2  # text token j (j >= 1 in the tokenizer output) sits at position j + 2
SEGMENT_IMAGE = 0
SEGMENT_TEXT = 1


@dataclass
class ImageBertModelOutput(ModelOutput):
    """Encoder output. `text_hidden_states` is aligned with `input_ids` (index 0 is the `[CLS]` output);
    `region_hidden_states` with `region_features`."""

    last_hidden_state: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    cls_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_hidden_states: torch.Tensor | None = None
    region_hidden_states: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageBertForPreTrainingOutput(ModelOutput):
    """Total and per-task losses (None for a task that is off or got no labels) and the ITM logits.
    `hidden_states` / `attentions` (on request) are the joint pass's, in the `[CLS] regions [SEP] words`
    layout."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    moc_loss: torch.Tensor | None = None
    mrfr_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    itc_loss: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageBertRetrievalOutput(ModelOutput):
    """`scores` are logits: sigmoid(score) is the match probability; higher ranks first."""

    scores: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# Key names of checkpoints saved before the encoder moved under `bert.` and the MLM head became
# `cls.predictions`.
LEGACY_KEY_MAPPING = {
    r"^imagebert\.": "bert.",
    r"^mlm_head\.dense\.": "cls.predictions.transform.dense.",
    r"^mlm_head\.LayerNorm\.": "cls.predictions.transform.LayerNorm.",
    r"^mlm_head\.bias$": "cls.predictions.bias",
}


def _checkpoint_keys(folder: Path) -> list[str] | None:
    """Tensor names of a local checkpoint (safetensors header or index; None when there is no such file)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), "pt") as fh:
        return list(fh.keys())


def _is_legacy_layout(keys: list[str]) -> bool:
    return any(k.startswith(("imagebert.", "mlm_head.")) for k in keys)


class ImageBertPreTrainedModel(PreTrainedModel):
    config_class = ImageBertConfig
    config: ImageBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    # A BertForPreTraining checkpoint's NSP head (2-way) has no counterpart here; ImageBERT's ITM head is new.
    _keys_to_ignore_on_load_unexpected = [r"^cls\.seq_relationship\.", r"position_ids$"]

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (N(0, initializer_range), zero biases, unit LayerNorm) for every new layer.
        Uses transformers' guarded init functions so tensors loaded from a checkpoint are never
        overwritten."""
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        if isinstance(module, _ItmReadout) and module.match is not None:
            # zero: a checkpoint saved without this readout scores exactly as before
            init.zeros_(module.match.weight)
            init.zeros_(module.match.bias)
        if isinstance(module, ImageBertModel):
            # identity statistics, for checkpoints saved before they existed
            init.zeros_(module.region_feature_mean)
            init.ones_(module.region_feature_std)
        if isinstance(module, _ContrastiveMixin) and hasattr(module, "itc_logit_scale"):
            init.constant_(module.itc_logit_scale, math.log(1.0 / self.config.itc_temperature))

    @property
    def validate_inputs(self) -> bool:
        """Check inputs for NaN/inf in forward (one host sync per call); a runtime switch, not saved."""
        return self.base_model._validate_inputs

    @validate_inputs.setter
    def validate_inputs(self, value: bool) -> None:
        self.base_model._validate_inputs = bool(value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, plus: a local checkpoint saved with the old key names
        (`imagebert.*`, `mlm_head.*`) is renamed on load (deprecated, one release) and re-saves in the new
        layout."""
        folder = Path(pretrained_model_name_or_path)
        legacy = False
        if folder.is_dir() and "key_mapping" not in kwargs:
            keys = _checkpoint_keys(folder)
            legacy = keys is not None and _is_legacy_layout(keys)
        if not legacy:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        warnings.warn(
            f"{folder}: checkpoint uses the old key names (imagebert.*, mlm_head.*); they are renamed on "
            "load. Re-save it with save_pretrained: the old layout is read for one more release only",
            DeprecationWarning,
            stacklevel=2,
        )
        result = super().from_pretrained(
            pretrained_model_name_or_path, *args, key_mapping=dict(LEGACY_KEY_MAPPING), **kwargs
        )
        model = result[0] if isinstance(result, tuple) else result
        # Do not write the old names back: save_pretrained reverts the load-time renaming unless told
        # otherwise.
        model._weight_conversions = None
        return result

    @classmethod
    def init_from_bert(cls, path: str | Path | None = None, **config_overrides: Any):
        """A new model whose embeddings, encoder and pooler (and MLM transform, when the checkpoint has one) come
        from a Hugging Face BERT folder through `from_pretrained`; every other layer is initialised as BERT
        initialises its own. `config_overrides` set ImageBERT's fields (or replace BERT's)."""
        from imagebert.modeling.inputs import default_bert_path

        folder = Path(path) if path is not None else default_bert_path()
        if not (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").is_file():
            raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
        config = ImageBertConfig.from_bert_checkpoint(folder, **config_overrides)
        from transformers.utils import logging as hf_logging

        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the new region layers are expected; we report them ourselves
        hf_logging.disable_progress_bar()
        try:
            model, info = super().from_pretrained(str(folder), config=config, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
        missing = sorted(info.get("missing_keys", []))
        text_side = [k for k in missing if k.removeprefix("bert.").startswith(("embeddings.", "encoder."))]
        if text_side:
            raise ValueError(f"{folder}: not a complete BERT checkpoint; missing {text_side[:5]}")
        new = sorted({k.removeprefix("bert.").split(".")[0] for k in missing})
        log.info("init_from_bert(%s): newly initialised: %s", folder, ", ".join(new))
        model.newly_initialized_modules = new
        return model


class ImageBertModel(ImageBertPreTrainedModel):
    """The single-stream encoder. Either modality may be omitted for a text-only or image-only pass."""

    # Loading a pre-training / retrieval checkpoint into the bare encoder (AutoModel) drops the heads quietly.
    _keys_to_ignore_on_load_unexpected = [
        r"^cls\.", r"^region_heads\.", r"^itm_", r"^itc_", r"^mlm_head\.", r"position_ids$",
    ]  # fmt: skip

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        bias = config.visual_projection_bias
        self.region_feature_proj = nn.Linear(config.visual_feature_dim, config.hidden_size, bias=bias)
        self.region_location_proj = nn.Linear(config.location_dim, config.hidden_size, bias=bias)
        if config.region_embedding_layernorm:
            self.region_feature_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.region_location_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Per-dimension statistics of the training features (identity until `set_region_feature_stats`).
        self.register_buffer("region_feature_mean", torch.zeros(config.visual_feature_dim))
        self.register_buffer("region_feature_std", torch.ones(config.visual_feature_dim))
        self._validate_inputs = bool(config.legacy_training_switches.get("validate_inputs", True))
        # 0: sequences keep their length; N: padded (masked) to a multiple of N, set by `compile_layers`
        self.sequence_multiple = 0
        self.post_init()

    def compile_layers(self, pad_to_multiple: int = 16) -> None:
        """`torch.compile` every encoder layer in place (state-dict keys unchanged). The layers share one code
        path, so torch compiles one graph per sequence shape and reuses it in all of them, which keeps the
        compile time to that of one layer; sequences are padded to a multiple of `pad_to_multiple` so the
        shapes are few. Embeddings, heads and masking stay eager (their shapes depend on the data). Raises
        torch._dynamo's process-wide recompile limit to at least 64 (one graph per bucket must fit)."""
        import torch._dynamo

        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(int(getattr(torch._dynamo.config, limit)), 64))
        for layer in self.encoder.layer:
            layer.compile(dynamic=False)
        self.sequence_multiple = int(pad_to_multiple)

    @property
    def region_feature_stats_set(self) -> bool:
        """Whether standardisation statistics were measured (the identity buffers mean they were not)."""
        return bool((self.region_feature_mean != 0).any() or (self.region_feature_std != 1).any())

    def set_region_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install the per-dimension mean and std of the training features (used when
        `region_feature_norm == "standardize"`); std is floored so constant dimensions do not blow up."""
        dim = self.config.visual_feature_dim
        mean, std = torch.as_tensor(mean).float().reshape(-1), torch.as_tensor(std).float().reshape(-1)
        if mean.numel() != dim or std.numel() != dim:
            raise ValueError(f"feature statistics must have {dim} values, got {mean.numel()} / {std.numel()}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("feature statistics contain NaN/inf")
        floor = max(float(std.mean()) * 1e-2, 1e-6)
        with torch.no_grad():
            self.region_feature_mean.copy_(mean)
            self.region_feature_std.copy_(std.clamp(min=floor))

    def normalize_region_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features -> the encoder's input space (float32). An all-zero row (a masked region, as the paper
        zeroes them) stays zero; "none" returns the features unchanged."""
        features = features.float()
        if self.config.region_feature_norm == "none":
            return features
        zero = (features == 0).all(dim=-1, keepdim=True)
        out = (features - self.region_feature_mean) / self.region_feature_std
        return out.masked_fill(zero, 0.0)

    def embed_regions(self, region_features: torch.Tensor, region_locations: torch.Tensor) -> torch.Tensor:
        """Projected region embedding (before BERT's embedding LayerNorm): feature part + location part."""
        dtype = self.region_feature_proj.weight.dtype
        feats = self.region_feature_proj(self.normalize_region_features(region_features).to(dtype))
        locs = self.region_location_proj(region_locations.to(dtype))
        if self.config.region_embedding_layernorm:
            feats, locs = self.region_feature_norm(feats), self.region_location_norm(locs)
        return feats + locs

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _check_inputs(
        self,
        input_ids: torch.Tensor | None,
        region_features: torch.Tensor | None,
        region_locations: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        if input_ids is None and region_features is None:
            raise ValueError("ImageBertModel: give input_ids, region_features, or both")
        if input_ids is not None and input_ids.shape[1] > cfg.max_text_tokens:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens, more than max_text_tokens={cfg.max_text_tokens}"
            )
        if region_features is None:
            return
        if region_features.dim() != 3 or region_features.shape[-1] != cfg.visual_feature_dim:
            raise ValueError(
                f"region_features must be (batch, regions, {cfg.visual_feature_dim}); got {tuple(region_features.shape)} "
                f"(feature width {region_features.shape[-1]} != visual_feature_dim {cfg.visual_feature_dim})"
            )
        if region_features.shape[1] > cfg.max_regions:
            raise ValueError(
                f"{region_features.shape[1]} regions per image, more than max_regions={cfg.max_regions}"
            )
        if region_locations is None or region_locations.shape != (
            *region_features.shape[:2],
            cfg.location_dim,
        ):
            raise ValueError(
                f"region_locations must be (batch, regions, {cfg.location_dim}) to match region_features; "
                f"got {None if region_locations is None else tuple(region_locations.shape)}"
            )
        if self._validate_inputs:
            if not bool(torch.isfinite(region_features).all()):
                bad = (~torch.isfinite(region_features)).any(-1).nonzero()[0].tolist()
                raise ValueError(
                    f"region_features has NaN/inf values (first at batch item {bad[0]}, region {bad[1]})"
                )
            if not bool(torch.isfinite(region_locations).all()):
                raise ValueError("region_locations has NaN/inf values")

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        region_features: torch.Tensor | None = None,
        region_locations: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ImageBertModelOutput:
        """`hidden_states` (embeddings output + one per layer) and `attentions` (one per layer,
        `attn_implementation="eager"` only: SDPA never materialises the weights) are returned on request, in
        the joint sequence layout."""
        self._check_inputs(input_ids, region_features, region_locations)
        cfg = self.config
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(cfg, "output_hidden_states", False))
        if output_attentions is None:
            output_attentions = bool(getattr(cfg, "output_attentions", False))
        if output_attentions and cfg._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions needs eager attention (this model runs {cfg._attn_implementation!r}, "
                "which does not compute the weights); load it with from_pretrained(..., "
                "attn_implementation='eager') or call model.set_attn_implementation('eager')"
            )
        word = self.embeddings.word_embeddings
        ref = input_ids if input_ids is not None else region_features
        batch, device = ref.shape[0], ref.device
        embeds: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        segments: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []

        def add(e: torch.Tensor, pos: torch.Tensor, seg: int, mask: torch.Tensor) -> None:
            n = e.shape[1]
            embeds.append(e)
            positions.append(pos.expand(batch, n))
            segments.append(torch.full((batch, n), seg, dtype=torch.long, device=device))
            masks.append(mask.to(torch.long))

        one = torch.ones(batch, 1, dtype=torch.long, device=device)
        # One word-embedding lookup for [CLS], the image [SEP] and the words: each lookup's backward builds a
        # dense (vocab x hidden) gradient, so three lookups cost three of those per step.
        id_parts: list[torch.Tensor] = []
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            id_parts.append(input_ids[:, :1])
            cls_mask = attention_mask[:, :1]
        else:
            id_parts.append(torch.full((batch, 1), cfg.cls_token_id, dtype=torch.long, device=device))
            cls_mask = one
        if region_features is not None:
            id_parts.append(torch.full((batch, 1), cfg.sep_token_id, dtype=torch.long, device=device))
        has_text = input_ids is not None and input_ids.shape[1] > 1
        if has_text:
            id_parts.append(input_ids[:, 1:])
        token_embeds = word(torch.cat(id_parts, dim=1) if len(id_parts) > 1 else id_parts[0])
        add(token_embeds[:, :1], torch.zeros(1, 1, dtype=torch.long, device=device), SEGMENT_IMAGE, cls_mask)

        num_regions = 0
        if region_features is not None:
            num_regions = region_features.shape[1]
            if region_mask is None:
                region_mask = torch.ones(region_features.shape[:2], dtype=torch.long, device=device)
            add(
                self.embed_regions(region_features, region_locations),
                torch.full((1, 1), REGION_POSITION_ID, device=device),
                SEGMENT_IMAGE,
                region_mask,
            )
            add(
                token_embeds[:, 1:2],
                torch.full((1, 1), IMAGE_SEP_POSITION_ID, device=device),
                SEGMENT_IMAGE,
                one,
            )
        if has_text:
            text_len = input_ids.shape[1] - 1
            text_pos = torch.arange(1, text_len + 1, device=device).unsqueeze(0) + TEXT_POSITION_OFFSET
            add(token_embeds[:, -text_len:], text_pos, SEGMENT_TEXT, attention_mask[:, 1:])

        inputs_embeds = torch.cat([e.to(embeds[0].dtype) for e in embeds], dim=1)
        position_ids = torch.cat(positions, dim=1)
        token_type_ids = torch.cat(segments, dim=1)
        full_mask = torch.cat(masks, dim=1)
        hidden = self.embeddings(
            inputs_embeds=inputs_embeds, position_ids=position_ids, token_type_ids=token_type_ids
        )
        # masked positions up to the bucket, so that compiled layers meet a few shapes and not one per batch
        length = hidden.shape[1]
        padded = bucket(length, self.sequence_multiple) if self.sequence_multiple else length
        if padded > length:
            hidden = torch.cat([hidden, hidden.new_zeros(batch, padded - length, hidden.shape[2])], dim=1)
            full_mask = torch.cat([full_mask, full_mask.new_zeros(batch, padded - length)], dim=1)
        mask4d = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=full_mask)
        all_hidden, all_attn = self._run_encoder(hidden, mask4d, output_hidden_states, output_attentions)
        if padded > length:
            all_hidden = [h[:, :length] for h in all_hidden]
            all_attn = [a[..., :length, :length] for a in all_attn]
            full_mask = full_mask[:, :length]
        hidden = all_hidden[-1]

        region_hidden = text_hidden = None
        if region_features is not None:
            region_hidden = hidden[:, 1 : 1 + num_regions]
            if input_ids is not None:
                text_hidden = torch.cat([hidden[:, :1], hidden[:, num_regions + 2 :]], dim=1)
        elif input_ids is not None:
            text_hidden = hidden
        return ImageBertModelOutput(
            last_hidden_state=hidden,
            attention_mask=full_mask,
            cls_hidden_state=hidden[:, 0],
            pooler_output=self.pooler(hidden),
            text_hidden_states=text_hidden,
            region_hidden_states=region_hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )

    def _run_encoder(
        self, hidden: torch.Tensor, mask4d: torch.Tensor | None, keep_hidden: bool, keep_attn: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """BertEncoder's layer loop, keeping every layer's output and (through a hook on the self-attention,
        whose weights BertLayer drops) the attention weights when asked."""
        if (keep_hidden or keep_attn) and getattr(self.encoder.layer[0], "fused_layer_stack", False):
            raise ValueError(
                "this is a scoring copy whose encoder layers run as one calibrated int8 stack "
                "(imagebert.runtime.int8_static): it has no per-layer hidden states or attention weights"
            )
        states = [hidden]
        weights: list[torch.Tensor] = []
        hooks = []
        if keep_attn:
            for layer in self.encoder.layer:
                hooks.append(
                    layer.attention.self.register_forward_hook(lambda m, a, out: weights.append(out[1]))
                )
        try:
            for layer in self.encoder.layer:
                hidden = layer(hidden, mask4d)
                if keep_hidden:
                    states.append(hidden)
        finally:
            for h in hooks:
                h.remove()
        return (states if keep_hidden else [hidden]), weights


def itc_projections_trained(config: ImageBertConfig) -> bool:
    """Whether the contrastive projections ever received a loss (`itc_trained_steps` > 0). The paper's recipe
    never trains them, so ranking with them is close to random."""
    return int(getattr(config, "itc_trained_steps", 0) or 0) > 0


UNTRAINED_ITC_MESSAGE = (
    "the checkpoint's contrastive (ITC) projections were never trained (config itc_trained_steps = 0), so a "
    "first stage ranked with them would be close to random. Pre-train with the fifth task on "
    "(`--set tasks.itc=true`, formerly model.task_itc=true, as configs/pretrain/demo_cpu.yaml does) or "
    "fine-tune with `--set loss.itc=1.0`, or use `--mode exhaustive`"
)


class _ContrastiveMixin:
    """Single-modality embeddings from the same encoder, for the image-text contrastive task and fast retrieval."""

    bert: ImageBertModel
    itc_text_proj: nn.Linear
    itc_image_proj: nn.Linear
    itc_logit_scale: nn.Parameter

    def _init_contrastive(self, config: ImageBertConfig) -> None:
        self.itc_text_proj = nn.Linear(config.hidden_size, config.itc_dim)
        self.itc_image_proj = nn.Linear(config.hidden_size, config.itc_dim)
        self.itc_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.itc_temperature)))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, itc_dim) L2-normalised embedding of a text-only pass (`[CLS] words [SEP]`)."""
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).cls_hidden_state
        return F.normalize(self.itc_text_proj(cls).float(), dim=-1)

    def encode_image(
        self,
        region_features: torch.Tensor,
        region_locations: torch.Tensor,
        region_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, itc_dim) L2-normalised embedding of an image-only pass (`[CLS] regions [SEP]`)."""
        out = self.bert(
            region_features=region_features, region_locations=region_locations, region_mask=region_mask
        )
        return F.normalize(self.itc_image_proj(out.cls_hidden_state).float(), dim=-1)

    @property
    def imagebert(self) -> ImageBertModel:
        """Deprecated name of `bert` (the encoder moved there to match BERT's layout); kept for one
        release."""
        return self.bert


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class _ItmReadout(nn.Module):
    """What the ITM (and retrieval score) head reads: the pooler or `[CLS]` (the paper), plus, when
    `itm_match_features` is on, a projection of the elementwise product of the joint pass's mean word state and
    mean region state. The product gives the head a multiplicative text-image interaction from the first step;
    without it a match must first emerge in attention, which sat at chance for hundreds of steps (see
    docs/training.md, "Why ITM did not learn")."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        self.use_pooler = config.itm_use_pooler
        self.match = nn.Linear(config.hidden_size, config.hidden_size) if config.itm_match_features else None

    def forward(
        self, out: ImageBertModelOutput, attention_mask: torch.Tensor | None, region_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = out.pooler_output if self.use_pooler else out.cls_hidden_state
        if self.match is None or out.region_hidden_states is None or out.text_hidden_states is None:
            return x
        words = out.text_hidden_states[:, 1:]
        word_mask = None if attention_mask is None else attention_mask[:, 1:]
        text = _masked_mean(words, word_mask)
        image = _masked_mean(out.region_hidden_states, region_mask)
        return x + self.match(text * image)


class ImageBertForPreTraining(_ContrastiveMixin, ImageBertPreTrainedModel):
    """ImageBERT with the MLM, MOC, MRFR and ITM heads (and the optional contrastive projections).

    MLM, MOC and MRFR are computed only at masked positions of matched pairs (`itm_labels == 1`), the paper's
    "conditional mask"; ITM on every pair. Which tasks run and their weights are `self.tasks` (a
    `PretrainingTasks`, set by the pre-training driver; not part of the saved config).
    """

    # The MLM decoder is the word-embedding matrix, and its bias is the head's `bias` (as in
    # BertForPreTraining).
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__(config)
        self.bert = ImageBertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.region_heads = RegionHeads(config)
        self.itm_readout = _ItmReadout(config)
        self.itm_head = ScoreHead(config.hidden_size, 1)
        self._init_contrastive(config)
        self.tasks = PretrainingTasks().with_legacy(config.legacy_training_switches)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def _itc_embeddings(
        self,
        ids: torch.Tensor,
        ids_mask: torch.Tensor | None,
        features: torch.Tensor,
        dtype: torch.dtype,
        locations: torch.Tensor,
        region_mask: torch.Tensor | None,
        rows: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-only and image-only embeddings of the given rows (all when `rows` is None)."""
        if rows is not None:
            ids, features, locations = ids[rows], features[rows], locations[rows]
            ids_mask = None if ids_mask is None else ids_mask[rows]
            region_mask = None if region_mask is None else region_mask[rows]
        return self.encode_text(ids, ids_mask), self.encode_image(features.to(dtype), locations, region_mask)

    def _draw_partners(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        swap: torch.Tensor,
        groups: torch.Tensor,
        by_similarity: bool = True,
    ) -> torch.Tensor:
        """For each swapped row, another row drawn with probability softmax(scale * similarity) over the rows of
        other images (uniformly when not `by_similarity`): the caption for a kept image (swap 1), the image for a
        kept caption (swap 2)."""
        sim = image @ text.t()  # [i, j]: image i with caption j
        sim = torch.where((swap == 1)[:, None], sim, sim.t())
        same = groups[:, None] == groups[None, :]
        need = swap != 0
        if self.validate_inputs and bool((same[need].all(dim=1)).any()):
            raise ValueError(
                "itm_swap: a swapped row has no row of another image in its batch (see pair_groups)"
            )
        scale = self.itc_logit_scale.detach().exp().clamp(max=100.0).float() if by_similarity else 0.0
        logits = (scale * sim.float()).masked_fill(same, float("-inf"))
        logits = torch.where(need[:, None], logits, torch.zeros_like(logits))
        return torch.multinomial(logits.softmax(dim=-1), 1).squeeze(-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        region_features: torch.Tensor | None = None,
        region_locations: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        region_masked: torch.Tensor | None = None,
        moc_labels: torch.Tensor | None = None,
        mrfr_targets: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        itc_input_ids: torch.Tensor | None = None,
        itc_attention_mask: torch.Tensor | None = None,
        itm_swap: torch.Tensor | None = None,
        pair_groups: torch.Tensor | None = None,
        itm_swap_by_similarity: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ImageBertForPreTrainingOutput:
        """`itm_swap` (B,) turns rows into in-batch ITM negatives (1: another row's caption, 2: another row's
        image; `itm_labels` 0 there), the other row drawn by ITC similarity among the rows that are matched pairs
        as given (label 1 or swapped), never one of the same `pair_groups` (image); ITC runs on those rows.
        `itm_swap_by_similarity=False` draws that row uniformly instead (a warm-up)."""
        cfg, tasks = self.config, self.tasks
        losses: dict[str, torch.Tensor] = {}
        if itm_swap is not None:
            if not tasks.itc or region_features is None or input_ids is None:
                raise ValueError(
                    "itm_swap (ITM negatives drawn by ITC similarity) needs tasks.itc and both inputs"
                )
            swap = itm_swap.to(input_ids.device)
            # rows whose pair is a true match as given: the unswapped positives and the rows to be swapped
            clean = (swap != 0) if itm_labels is None else (swap != 0) | (itm_labels.to(swap.device) == 1)
            clean_rows = clean.nonzero().squeeze(-1)
            text, image = self._itc_embeddings(
                input_ids if itc_input_ids is None else itc_input_ids,
                attention_mask if itc_input_ids is None else itc_attention_mask,
                mrfr_targets if mrfr_targets is not None else region_features,
                region_features.dtype, region_locations, region_mask, clean_rows,
            )  # fmt: skip
            losses["itc"] = contrastive_loss_from_log_scale(text, image, self.itc_logit_scale)
            groups = clean_rows if pair_groups is None else pair_groups.to(swap.device)[clean_rows]
            partner = clean_rows[
                self._draw_partners(
                    text.detach(), image.detach(), swap[clean_rows], groups, itm_swap_by_similarity
                )
            ]
            partner = torch.zeros_like(swap).index_copy_(0, clean_rows, partner)
            rows = torch.arange(swap.shape[0], device=swap.device)
            text_rows = torch.where(swap == 1, partner, rows)
            image_rows = torch.where(swap == 2, partner, rows)
            input_ids = input_ids[text_rows]
            attention_mask = None if attention_mask is None else attention_mask[text_rows]
            region_features = region_features[image_rows]
            region_locations = None if region_locations is None else region_locations[image_rows]
            region_mask = None if region_mask is None else region_mask[image_rows]
        out = self.bert(
            input_ids, attention_mask, region_features, region_locations, region_mask,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )  # fmt: skip
        batch = out.last_hidden_state.shape[0]
        device = out.last_hidden_state.device
        matched = (
            itm_labels.to(device) == 1
            if itm_labels is not None
            else torch.ones(batch, dtype=torch.bool, device=device)
        )

        if tasks.mlm and mlm_labels is not None and out.text_hidden_states is not None:
            where = (mlm_labels != -100) & matched[:, None]
            logits = self.cls(out.text_hidden_states[where]).float()
            losses["mlm"] = F.cross_entropy(logits, mlm_labels[where], reduction="sum") / where.sum().clamp(
                min=1
            )

        if region_masked is not None and out.region_hidden_states is not None:
            masked = region_masked.bool() & matched[:, None]
            if region_mask is not None:
                masked = masked & region_mask.bool()
            if tasks.moc and moc_labels is not None:
                where = masked & (moc_labels >= 0)
                logits = self.region_heads.moc(out.region_hidden_states[where]).float()
                losses["moc"] = F.cross_entropy(
                    logits, moc_labels[where], reduction="sum"
                ) / where.sum().clamp(min=1)
            if tasks.mrfr and mrfr_targets is not None:
                pred = self.region_heads.mrfr(out.region_hidden_states[masked]).float()
                # regress the features as the encoder sees them (standardised), so the loss has one scale for
                # any feature type instead of growing with the detector's feature norms
                target = self.bert.normalize_region_features(mrfr_targets[masked])
                sq = (pred - target).pow(2)
                per_region = sq.mean(-1) if cfg.mrfr_reduction == "mean" else sq.sum(-1)
                losses["mrfr"] = per_region.sum() / masked.sum().clamp(min=1)

        itm_logits = self.itm_head(self.itm_readout(out, attention_mask, region_mask)).squeeze(-1).float()
        if tasks.itm and itm_labels is not None:
            losses["itm"] = F.binary_cross_entropy_with_logits(itm_logits, itm_labels.float())

        if tasks.itc and itm_swap is None and region_features is not None and input_ids is not None:
            text, image = self._itc_embeddings(
                input_ids if itc_input_ids is None else itc_input_ids,
                attention_mask if itc_input_ids is None else itc_attention_mask,
                mrfr_targets if mrfr_targets is not None else region_features,
                region_features.dtype, region_locations, region_mask, matched.nonzero().squeeze(-1),
            )  # fmt: skip
            losses["itc"] = contrastive_loss_from_log_scale(text, image, self.itc_logit_scale)

        weights = {name: tasks.weight(name) for name in TASK_NAMES}
        total = sum(weights[k] * v for k, v in losses.items()) if losses else None
        return ImageBertForPreTrainingOutput(
            loss=total,
            mlm_loss=losses.get("mlm"),
            moc_loss=losses.get("moc"),
            mrfr_loss=losses.get("mrfr"),
            itm_loss=losses.get("itm"),
            itc_loss=losses.get("itc"),
            itm_logits=itm_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class ImageBertForRetrieval(_ContrastiveMixin, ImageBertPreTrainedModel):
    """A pair scorer: the ITM head on `[CLS]` (loaded from a pre-training checkpoint gives zero-shot retrieval),
    plus the contrastive projections for the fast first stage."""

    _keys_to_ignore_on_load_unexpected = [
        r"^cls\.", r"^region_heads\.", r"^mlm_head\.", r"position_ids$",
    ]  # fmt: skip

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__(config)
        self.bert = ImageBertModel(config)
        self.itm_readout = _ItmReadout(config)
        self.itm_head = ScoreHead(config.hidden_size, 1)
        self._init_contrastive(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        region_features: torch.Tensor | None = None,
        region_locations: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ImageBertRetrievalOutput:
        out = self.bert(
            input_ids, attention_mask, region_features, region_locations, region_mask,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )  # fmt: skip
        scores = self.itm_head(self.itm_readout(out, attention_mask, region_mask)).squeeze(-1).float()
        loss = F.binary_cross_entropy_with_logits(scores, labels.float()) if labels is not None else None
        return ImageBertRetrievalOutput(
            scores=scores, loss=loss, hidden_states=out.hidden_states, attentions=out.attentions
        )
