"""Model-backed scorers: the cross-encoder over (caption, image) pairs and the single-modality first stage.

The evaluation gallery is held as caption texts, one image index per caption, and a way to fetch an image's
RegionRecord, so the same code serves a dataset split, a fold of it, or a hand-made test gallery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imagebert.data.types import RegionRecord
from imagebert.runtime.int8_static import INT8_SHAPES
from imagebert.runtime.modes import eval_mode
from imagebert.runtime.precision import autocast, resolve_precision  # one precision rule for all

_IMAGE_CHUNK = 256  # images collated at a time for the first stage


@dataclass
class Gallery:
    """An evaluation set: captions (rows of the score matrix) and images (columns), in protocol order."""

    texts: list[str]
    caption_image: np.ndarray  # [num_captions] column of each caption's image
    image_ids: list[str]
    get_record: Callable[[int], RegionRecord]  # image column -> its regions

    @property
    def num_captions(self) -> int:
        return len(self.texts)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_records(cls, records: Sequence[RegionRecord], captions: Sequence[tuple[str, str]]) -> Gallery:
        """Build from in-memory records and (image_id, text) pairs; images keep the order of `records`."""
        index = {r.image_id: i for i, r in enumerate(records)}
        return cls(
            texts=[t for _, t in captions],
            caption_image=np.array([index[i] for i, _ in captions], dtype=np.int64),
            image_ids=[r.image_id for r in records],
            get_record=lambda i: records[i],
        )

    def subset(self, captions: np.ndarray, images: np.ndarray) -> Gallery:
        """A fold: the given image columns (renumbered from 0) and the given caption rows."""
        images = np.asarray(images)
        remap = {int(old): new for new, old in enumerate(images)}
        get = self.get_record
        return Gallery(
            texts=[self.texts[c] for c in captions],
            caption_image=np.array([remap[int(self.caption_image[c])] for c in captions], dtype=np.int64),
            image_ids=[self.image_ids[i] for i in images],
            get_record=lambda i: get(int(images[i])),
        )


class _Fp32Head(torch.nn.Module):
    """Runs a score head outside autocast: bf16 logits have ~3 significant digits, and a model whose scores sit
    close together (a zero-shot ITM head, an early checkpoint) would see most pairs tie, which the pessimistic
    tie rule turns into zero recall. The encoder keeps its bf16 speed; only this last linear layer is fp32."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float())


@contextlib.contextmanager
def fp32_score_head(model: torch.nn.Module, enabled: bool = True):
    """Temporarily wrap `model.itm_head` in `_Fp32Head` (restored on exit, so training is unaffected)."""
    head = getattr(model, "itm_head", None)
    # the model's own ScoreHead already computes in fp32 (imagebert.modeling.heads); wrapping is for older models
    if not enabled or head is None or isinstance(head, _Fp32Head) or getattr(head, "computes_in_fp32", False):
        yield
        return
    model.itm_head = _Fp32Head(head)
    try:
        yield
    finally:
        model.itm_head = head


def _check_finite(regions: dict[str, torch.Tensor]) -> None:
    """The encoder's NaN/inf input check, once per call on the host tensors instead of once per batch."""
    for key in ("region_features", "region_locations"):
        if not bool(torch.isfinite(regions[key]).all()):
            raise ValueError(f"{key} has NaN/inf values")


@contextlib.contextmanager
def _no_per_batch_checks(model: torch.nn.Module):
    """Turn off the encoder's per-forward input checks (a host sync each, and a graph break under torch.compile)
    while the scorer runs; `_check_finite` has checked the whole call's inputs once already."""
    if not getattr(model, "validate_inputs", False):
        yield
        return
    model.validate_inputs = False
    try:
        yield
    finally:
        model.validate_inputs = True


SCORING_WEIGHTS = ("fp32", "bf16", "int8", "int8-static")
INT8_WEIGHTS = ("int8", "int8-static")


def scoring_precision(weights: str, precision: str) -> str:
    """The precision a scorer runs in: int8 weights take fp32 activations, so "auto" means fp32 for them (an
    explicit bf16 / fp16 is refused by the scorer, not changed here)."""
    return "fp32" if weights in INT8_WEIGHTS and precision == "auto" else precision


# pairs sampled from the gallery (seeded) whose activations set int8-static's scales
CALIBRATION_PAIRS = 512


def _check_int8(
    weights: str, device: torch.device, dtype: torch.dtype | None, compiled: bool, precision: str
) -> None:
    """int8 weights are a CPU fp32 path: refuse the combinations that would silently do something else."""
    if weights == "int8-static":
        from imagebert.runtime.int8_static import require_static_int8_runtime

        require_static_int8_runtime(device)
    else:
        from imagebert.runtime.quantize import require_int8_runtime

        require_int8_runtime(device)
    if dtype is not None:
        raise ValueError(
            f"weights {weights} scores in fp32 activations; precision {precision!r} resolves to {dtype} here: "
            f"use --precision fp32 with --weights {weights} (or --weights bf16 with --precision bf16)"
        )
    if compiled:
        raise ValueError(
            f"weights {weights} and compile do not combine here (int8 is measured and tested uncompiled, "
            "int8-static compiles its own stack); use --compile off"
        )


class ModelPairScorer:
    """Scores (caption, image) pairs with ``ImageBertForRetrieval`` in length-sorted batches.

    Captions are tokenised once for the whole gallery; each call encodes its distinct images once and reuses them
    for every caption they are paired with. Pairs are sorted by (text length, region count) so a batch carries
    little padding, then scores are put back in the caller's order. The same set of pairs always gives the same
    batches, which is what makes fast mode with k = gallery size bit-identical to exhaustive mode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        collator: Any,
        gallery: Gallery,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 128,
        weights: str = "fp32",
        compile: str | bool = "off",
        sort_pairs: bool = True,
        on_batch: Callable[[int], None] | None = None,
        int8_shapes: str = "dynamic",
        int8_sequence_multiple: int | None = None,
    ) -> None:
        """`weights`: "fp32" scores with the model's own parameters under autocast; "bf16" keeps a bf16 copy of
        the encoder resident (no per-forward weight casts; the score head stays fp32) when `precision` resolves
        to bf16; "int8" keeps a copy whose encoder layers run int8 matmuls (CPU, fp32 precision only:
        `imagebert.runtime.quantize`); "int8-static" one whose layer stack is int8 with activation scales
        calibrated on `CALIBRATION_PAIRS` seeded pairs of the gallery and compiled (CPU, torchao:
        `imagebert.runtime.int8_static`; `int8_shapes` "dynamic" compiles one graph for every sequence length,
        "static" one per length, padded to `int8_sequence_multiple`, None = 4 static, 1 dynamic). The copies are
        snapshots taken here (call `refresh_weights()` after the model changes). `compile`: "off", "on" or "auto"
        (on for CUDA), see `imagebert.runtime.compile`; compiled batches are padded to bucketed shapes so they do
        not recompile per batch. `sort_pairs` False keeps the caller's order (for measuring what length bucketing
        buys). `on_batch(n)` is called after each forward with its number of pairs."""
        if weights not in SCORING_WEIGHTS:
            raise ValueError(f"weights must be one of {SCORING_WEIGHTS}, got {weights!r}")
        if int8_shapes not in INT8_SHAPES:  # checked here, before minutes of calibration and export
            raise ValueError(f"int8-static: int8_shapes must be one of {INT8_SHAPES}, got {int8_shapes!r}")
        self.model = model
        self.collator = collator
        self.gallery = gallery
        self.device = torch.device(device)
        self.dtype = resolve_precision(scoring_precision(weights, precision), self.device)
        self.batch_size = batch_size
        self.weights = weights
        self.int8_shapes = int8_shapes
        self.int8_sequence_multiple = int8_sequence_multiple
        self.sort_pairs = sort_pairs
        self.on_batch = on_batch
        text = collator.encode_text(gallery.texts)
        self.input_ids = text["input_ids"]
        self.attention_mask = text["attention_mask"]
        self.text_lengths = self.attention_mask.sum(1).numpy()
        self.passes = 0
        self._resident: torch.nn.Module | None = None
        from imagebert.runtime.compile import ShapeBuckets, resolve_compile

        self.compiled = resolve_compile(compile, self.device)
        if weights in INT8_WEIGHTS:
            _check_int8(weights, self.device, self.dtype, self.compiled, precision)
        if (weights == "bf16" and self.dtype == torch.bfloat16) or weights in INT8_WEIGHTS:
            self.refresh_weights()
        cfg = getattr(model, "config", None)
        self.buckets = (
            ShapeBuckets(batch=batch_size, max_text=getattr(cfg, "max_text_tokens", None),
                         max_regions=getattr(cfg, "max_regions", None))
            if self.compiled
            # int8-static's copy pads the sequence itself; only the last batch's rows need padding
            else ShapeBuckets(batch=batch_size, text_multiple=1, region_multiple=1)
            if weights == "int8-static"
            else None
        )  # fmt: skip
        self._compiled_forward: Callable[..., Any] | None = None

    def refresh_weights(self) -> None:
        """(Re)take the resident snapshot of the model: bf16 (encoder in bf16, score head in fp32) or int8
        (encoder layers' Linear modules int8, everything else fp32)."""
        import copy

        if self.weights == "int8":
            from imagebert.runtime.quantize import int8_encoder_copy

            self._resident = int8_encoder_copy(self.model)
            self._compiled_forward = None
            return
        if self.weights == "int8-static":
            from imagebert.runtime.int8_static import calibrated_int8_copy

            self._resident = calibrated_int8_copy(
                self.model, self._calibration_batches(), sequence_multiple=self.int8_sequence_multiple,
                shapes=self.int8_shapes,
            )  # fmt: skip
            self._compiled_forward = None
            return
        resident = copy.deepcopy(self.model).eval().to(torch.bfloat16)
        head = getattr(resident, "itm_head", None)
        if head is not None:
            head.float()
        self._resident = resident
        self._compiled_forward = None

    def _scoring_model(self) -> torch.nn.Module:
        return self._resident if self._resident is not None else self.model

    def _forward(self, model: torch.nn.Module) -> Callable[..., Any]:
        if not self.compiled:
            return model
        if self._compiled_forward is None:
            from imagebert.runtime.compile import compile_module

            self._compiled_forward = compile_module(model, self.device)
        return self._compiled_forward

    @torch.no_grad()
    def score_pairs(self, caption_idx: np.ndarray, image_idx: np.ndarray) -> np.ndarray:
        caption_idx = np.asarray(caption_idx, dtype=np.int64)
        out = np.empty(len(caption_idx), dtype=np.float32)
        model = self._scoring_model()
        batches = self._batches(caption_idx, np.asarray(image_idx, dtype=np.int64))
        with eval_mode(model), fp32_score_head(model, self.dtype is not None), _no_per_batch_checks(model):
            forward = self._forward(model)
            for sel, batch in batches:
                if self.buckets is not None:
                    batch = self.buckets.pad(batch)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with autocast(self.device, self.dtype):
                    scores = forward(**batch).scores
                out[sel] = scores[: len(sel)].float().cpu().numpy()
                self.passes += len(sel)
                if self.on_batch is not None:
                    self.on_batch(len(sel))
        return out

    def _batches(
        self, caption_idx: np.ndarray, image_idx: np.ndarray
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(positions in the caller's order, model inputs) per batch: each call's distinct images collated once,
        pairs sorted by (text length, region count), each batch trimmed to its longest text and region list."""
        images, slot = np.unique(image_idx, return_inverse=True)
        regions = self.collator.encode_regions([self.gallery.get_record(int(i)) for i in images])
        counts = regions["region_mask"].sum(1).numpy()
        _check_finite(regions)
        if self.sort_pairs:
            order = np.lexsort((image_idx, caption_idx, counts[slot], self.text_lengths[caption_idx]))
        else:
            order = np.arange(len(caption_idx))
        for start in range(0, len(order), self.batch_size):
            sel = order[start : start + self.batch_size]
            caps = torch.from_numpy(caption_idx[sel])
            slots = torch.from_numpy(slot[sel])
            t_len = int(self.text_lengths[caption_idx[sel]].max())
            r_len = int(counts[slot[sel]].max())
            yield (
                sel,
                {
                    "input_ids": self.input_ids[caps, :t_len],
                    "attention_mask": self.attention_mask[caps, :t_len],
                    "region_features": regions["region_features"][slots, :r_len],
                    "region_locations": regions["region_locations"][slots, :r_len],
                    "region_mask": regions["region_mask"][slots, :r_len],
                },
            )

    def _calibration_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """int8-static's calibration sample: `CALIBRATION_PAIRS` (caption, image) pairs drawn with a fixed seed
        from the gallery, so the same gallery always gives the same scales (and the same scores)."""
        rng = np.random.default_rng(0)
        n = min(CALIBRATION_PAIRS, self.gallery.num_captions * self.gallery.num_images)
        captions = rng.integers(0, self.gallery.num_captions, size=n)
        images = rng.integers(0, self.gallery.num_images, size=n)
        for _, batch in self._batches(captions, images):
            yield {k: v.to(self.device) for k, v in batch.items()}


@torch.no_grad()
def embed_gallery(
    model: torch.nn.Module,
    collator: Any,
    gallery: Gallery,
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    batch_size: int = 256,
    allow_untrained: bool = False,
    progress: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """First-stage embeddings: (texts [C, E], images [I, E]) from the model's text-only and image-only passes.

    Refuses (ConfigError) a model whose contrastive projections were never trained, unless `allow_untrained`.
    `progress`: anything with `update(n)` (e.g. `imagebert.runtime.progress.Progress`), told of every text and
    image embedded."""
    from imagebert.modeling.model import UNTRAINED_ITC_MESSAGE, itc_projections_trained

    if not allow_untrained and not itc_projections_trained(model.config):
        from imagebert.config_utils import ConfigError

        raise ConfigError(f"fast mode: {UNTRAINED_ITC_MESSAGE}")
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    with eval_mode(model):
        return _embed(model, collator, gallery, device, dtype, batch_size, progress)


def _embed(
    model, collator, gallery, device, dtype, batch_size, progress=None
) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Texts and images in length-sorted batches (each trimmed to its longest member), results put back in
    gallery order: padding is masked, so sorting changes the cost, not the embeddings (beyond bf16 rounding)."""
    enc = collator.encode_text(gallery.texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def text_batch(sel: torch.Tensor, n: int) -> torch.Tensor:
        return model.encode_text(ids[sel, :n].to(device), mask[sel, :n].to(device))

    texts = _in_length_sorted_batches(mask.sum(1), batch_size, text_batch, device, dtype, progress)
    images = []
    chunk = max(batch_size, _IMAGE_CHUNK)
    for start in range(0, gallery.num_images, chunk):
        reg = collator.encode_regions(
            [gallery.get_record(i) for i in range(start, min(start + chunk, gallery.num_images))]
        )

        def image_batch(sel: torch.Tensor, n: int, reg: dict = reg) -> torch.Tensor:
            return model.encode_image(*(reg[k][sel, :n].to(device) for k in _REGION_KEYS))

        images.append(
            _in_length_sorted_batches(
                reg["region_mask"].sum(1), batch_size, image_batch, device, dtype, progress
            )
        )
    return texts.numpy(), torch.cat(images).numpy()


_REGION_KEYS = ("region_features", "region_locations", "region_mask")


def _in_length_sorted_batches(
    lengths: torch.Tensor,
    batch_size: int,
    run: Callable[[torch.Tensor, int], torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None,
    progress: Any = None,
) -> torch.Tensor:
    """`run(rows, longest)` over batches of items sorted by length (stable, so the batches are the same run to
    run), the float32 results back in the items' order."""
    order = torch.argsort(lengths, stable=True)
    parts = []
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        with autocast(device, dtype):
            parts.append(run(sel, int(lengths[sel].max())).float().cpu())
        if progress is not None:
            progress.update(len(sel))
    in_order = torch.cat(parts)
    out = torch.empty_like(in_order)
    out[order] = in_order
    return out


def first_stage_scores(text_emb: np.ndarray, image_emb: np.ndarray) -> np.ndarray:
    """Cosine similarities [C, I] (both sides are L2-normalised by the model)."""
    return (torch.from_numpy(text_emb) @ torch.from_numpy(image_emb).T).numpy().astype(np.float32)
