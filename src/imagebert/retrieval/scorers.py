"""Model-backed scorers: the cross-encoder over (caption, image) pairs and the single-modality first stage.

The evaluation gallery is held as caption texts, one image index per caption, and a way to fetch an image's
RegionRecord, so the same code serves a dataset split, a fold of it, or a hand-made test gallery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imagebert.data.types import RegionRecord

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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """'fp32' -> None (no autocast); 'bf16'/'fp16' as asked; 'auto' -> bf16 where the hardware has it."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None


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
    if not enabled or head is None or isinstance(head, _Fp32Head):
        yield
        return
    model.itm_head = _Fp32Head(head)
    try:
        yield
    finally:
        model.itm_head = head


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    ) -> None:
        self.model = model
        self.collator = collator
        self.gallery = gallery
        self.device = torch.device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        text = collator.encode_text(gallery.texts)
        self.input_ids = text["input_ids"]
        self.attention_mask = text["attention_mask"]
        self.text_lengths = self.attention_mask.sum(1).numpy()
        self.passes = 0

    @torch.no_grad()
    def score_pairs(self, caption_idx: np.ndarray, image_idx: np.ndarray) -> np.ndarray:
        caption_idx = np.asarray(caption_idx, dtype=np.int64)
        image_idx = np.asarray(image_idx, dtype=np.int64)
        images, slot = np.unique(image_idx, return_inverse=True)
        regions = self.collator.encode_regions([self.gallery.get_record(int(i)) for i in images])
        counts = regions["region_mask"].sum(1).numpy()
        order = np.lexsort((image_idx, caption_idx, counts[slot], self.text_lengths[caption_idx]))
        out = np.empty(len(caption_idx), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with fp32_score_head(self.model, self.dtype is not None):
                self._run(order, caption_idx, slot, counts, regions, out)
        finally:
            self.model.train(was_training)
        return out

    def _run(self, order, caption_idx, slot, counts, regions, out) -> None:  # noqa: ANN001
        for start in range(0, len(order), self.batch_size):
            sel = order[start : start + self.batch_size]
            caps = torch.from_numpy(caption_idx[sel])
            slots = torch.from_numpy(slot[sel])
            t_len = int(self.text_lengths[caption_idx[sel]].max())
            r_len = int(counts[slot[sel]].max())
            batch = {
                "input_ids": self.input_ids[caps, :t_len],
                "attention_mask": self.attention_mask[caps, :t_len],
                "region_features": regions["region_features"][slots, :r_len],
                "region_locations": regions["region_locations"][slots, :r_len],
                "region_mask": regions["region_mask"][slots, :r_len],
            }
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast(self.device, self.dtype):
                scores = self.model(**batch).scores
            out[sel] = scores.float().cpu().numpy()
            self.passes += len(sel)


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
) -> tuple[np.ndarray, np.ndarray]:
    """First-stage embeddings: (texts [C, E], images [I, E]) from the model's text-only and image-only passes.

    Refuses (ConfigError) a model whose contrastive projections were never trained, unless `allow_untrained`."""
    from imagebert.modeling.model import UNTRAINED_ITC_MESSAGE, itc_projections_trained

    if not allow_untrained and not itc_projections_trained(model.config):
        from imagebert.config_utils import ConfigError

        raise ConfigError(f"fast mode: {UNTRAINED_ITC_MESSAGE}")
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    try:
        return _embed(model, collator, gallery, device, dtype, batch_size)
    finally:
        model.train(was_training)


def _embed(model, collator, gallery, device, dtype, batch_size) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    texts = []
    for start in range(0, gallery.num_captions, batch_size):
        enc = collator.encode_text(gallery.texts[start : start + batch_size])
        with autocast(device, dtype):
            e = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        texts.append(e.float().cpu())
    images = []
    for start in range(0, gallery.num_images, min(batch_size, _IMAGE_CHUNK)):
        idx = range(start, min(start + min(batch_size, _IMAGE_CHUNK), gallery.num_images))
        reg = collator.encode_regions([gallery.get_record(i) for i in idx])
        with autocast(device, dtype):
            e = model.encode_image(
                reg["region_features"].to(device),
                reg["region_locations"].to(device),
                reg["region_mask"].to(device),
            )
        images.append(e.float().cpu())
    return torch.cat(texts).numpy(), torch.cat(images).numpy()


def first_stage_scores(text_emb: np.ndarray, image_emb: np.ndarray) -> np.ndarray:
    """Cosine similarities [C, I] (both sides are L2-normalised by the model)."""
    return (torch.from_numpy(text_emb) @ torch.from_numpy(image_emb).T).numpy().astype(np.float32)
