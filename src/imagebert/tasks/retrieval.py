"""Retrieval fine-tuning (paper section 4.4): positives with sampled negatives both ways, BCE / CE / triplet losses,
optional online hard-negative mining and contrastive (ITC) loss, cheap validation and best-checkpoint selection.

The loop is the shared `imagebert.training.Trainer` (precision, DDP, checkpoints, resumption, NaN stops); this
module supplies the `TrainTask`, and validation (`imagebert.retrieval.validation.RetrievalValidator`) is one of the
Trainer's evaluation callbacks, whose `val_rsum` picks the best checkpoint. The whole loss, the contrastive part
included, is computed in `RetrievalTask.compute_loss`, which the Trainer runs inside the DDP-wrapped forward, so
every loss works with any number of processes. Each batch carries B positive pairs plus a shared pool of
`pool_size` candidate images and candidate captions (drawn from distinct images). Without mining each positive
takes P-1 random wrong candidates from the pool in each direction; with mining the model scores every
(positive, pool candidate) pair without gradients and the P-1 highest-scoring wrong ones are trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from imagebert.config_utils import ConfigError, load_config, to_dict
from imagebert.retrieval.losses import LossWeights, contrastive_loss, retrieval_loss
from imagebert.retrieval.mining import select_hard
from imagebert.runtime.modes import eval_mode
from imagebert.training.feature_stats import install_feature_stats, resolve_auto_sizes
from imagebert.training.trainer import TrainerConfig

log = logging.getLogger(__name__)

RETRIEVAL_META = "retrieval.json"  # marks a fine-tuned checkpoint (evaluation labels it "fine-tuned")


@dataclass
class NegativesConfig:
    """P-1 = num_negatives per direction (UNCONFIRMED in the paper; a small P keeps 144-token pairs affordable)."""

    num_negatives: int = 3
    pool_size: int = 16  # candidate images and captions drawn per batch (shared by its positives)
    hard: bool = False  # online hard-negative mining over the pool (not in the paper)
    # Mining from a model that cannot rank yet picks noise (it stalled the demo): random negatives until this
    # optimizer step, mined ones after it.
    hard_start_step: int = 0
    # What ranks the pool: "model" = the cross-encoder's own scores (2 x B x pool extra forwards without
    # gradients), "itc" = the contrastive first stage (B + pool single-modality passes; needs trained ITC).
    hard_source: str = "model"
    # 0 = take the top-scoring wrong candidates; > 0 = draw them without replacement with probability
    # proportional to exp(score / T), as ALBEF samples by similarity (less brittle when the pool has near-copies).
    hard_temperature: float = 0.0
    # Of the num_negatives per direction, this share is mined (rounded, at least 1) and the rest stay random: a
    # mix keeps the easy negatives that calibrate the score while the mined ones sharpen the ranking.
    hard_fraction: float = 1.0
    # Positive-aware mining: a wrong candidate scoring above (the positive's score - margin) is more often an
    # unlabelled match (a caption that fits both images) than a mistake, so it is not mined. null = off.
    # Units of the mining score: cosine similarity for hard_source "itc", the logit for "model".
    false_negative_margin: float | None = None


@dataclass
class LossConfig:
    """Weights of the summed loss; 0 switches a loss off. Paper's best: BCE alone."""

    bce: float = 1.0
    ce: float = 0.0
    triplet: float = 0.0
    itc: float = 0.0  # contrastive loss on text-only / image-only passes (trains the fast mode's first stage)
    margin: float = 0.2  # triplet margin (UNCONFIRMED in the paper)


@dataclass
class ValidationConfig:
    split: str = "val"
    # > 0: score every pair of this many validation images (seeded) and all their captions, the same R@K as
    # `imagebert evaluate`; 0: the sampled mode below (queries against a few candidates; R@5/10 saturate)
    num_images: int = 100
    num_queries: int = 500  # sampled mode: captions (IR) and images (TR) validated; 0 = all
    num_candidates: int = 19  # sampled mode: wrong candidates per query
    seed: int = 0
    batch_size: int = 128
    precision: str = "auto"


@dataclass
class FinetuneConfig:
    """The `imagebert finetune` config. `init_checkpoint` is a pre-training checkpoint (its ITM head becomes the
    score head); without one the model starts from BERT (`init_from_bert`, MiniLM by default) with `model`
    overrides."""

    dataset: str | None = None  # dataset YAML (imagebert.data.load_dataset_spec)
    train_split: str = "train"  # "train" includes COCO's restval through the dataset's split_aliases
    init_checkpoint: str | None = None
    init_from_bert: str | None = None
    out_dir: str = "runs/finetune"
    model: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    validation: ValidationConfig | None = field(default_factory=ValidationConfig)
    training: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(batch_size=24, learning_rate=5e-5, epochs=130)
    )

    def validate(self, *, check_paths: bool = True) -> None:
        """Names the offending key. check_paths=False skips the checkpoint-folder check (load_finetune_config
        calls this once the paths are resolved against the YAML's folder)."""
        self.training.validate("training")
        if self.validation is not None and self.validation.num_images < 0:
            raise ConfigError(f"validation.num_images must be >= 0, got {self.validation.num_images}")
        n = self.negatives
        if n.num_negatives < 1:
            raise ConfigError(f"negatives.num_negatives must be >= 1, got {n.num_negatives}")
        if n.pool_size < n.num_negatives + 1:
            raise ConfigError(
                f"negatives.pool_size ({n.pool_size}) must be >= num_negatives + 1 ({n.num_negatives + 1}): one pool "
                "item may be the positive's own image"
            )
        if n.hard_source not in ("model", "itc"):
            raise ConfigError(f"negatives.hard_source must be 'model' or 'itc', got {n.hard_source!r}")
        if n.hard_start_step < 0 or n.hard_temperature < 0:
            raise ConfigError("negatives.hard_start_step and negatives.hard_temperature must be >= 0")
        if not 0 < n.hard_fraction <= 1:
            raise ConfigError(f"negatives.hard_fraction must lie in (0, 1], got {n.hard_fraction}")
        w = self.loss
        if min(w.bce, w.ce, w.triplet, w.itc) < 0 or (w.bce + w.ce + w.triplet + w.itc) == 0:
            raise ConfigError("loss: weights must be >= 0 and at least one > 0")
        if self.init_checkpoint and self.init_from_bert:
            raise ConfigError("set at most one of 'init_checkpoint' and 'init_from_bert'")
        checkpoint = self.init_checkpoint
        if check_paths and checkpoint and not (Path(checkpoint) / "config.json").is_file():
            raise ConfigError(
                f"init_checkpoint: {self.init_checkpoint} is not a checkpoint folder (no config.json)"
            )


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read the YAML (relative paths resolve against its folder), apply `--set` overrides, validate."""
    cfg = load_config(FinetuneConfig, path, overrides)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    for key in ("dataset", "init_checkpoint", "init_from_bert"):
        value = getattr(cfg, key)
        if value is not None:
            p = Path(value).expanduser()
            setattr(cfg, key, str(p if p.is_absolute() else base / p))
    cfg.validate()
    return cfg


def validate_config(cfg: FinetuneConfig) -> None:
    """Deprecated alias of FinetuneConfig.validate."""
    cfg.validate()


class _Indices(torch.utils.data.Dataset):
    """Trainer items are caption indices; the task looks the pair up itself (it needs them for negatives)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RetrievalTask:
    """Builds positive + candidate-pool batches and computes the fine-tuning loss (a `TrainTask`)."""

    # one counted sample: a positive pair, scored with its 2 x num_negatives negatives
    sample_unit = "positives"

    def __init__(self, dataset: Any, collator: Any, negatives: NegativesConfig, loss: LossConfig) -> None:
        self.ds = dataset
        self.collator = collator
        self.neg = negatives
        self.weights = LossWeights(loss.bce, loss.ce, loss.triplet, loss.itc, loss.margin)
        self.image_ids = list(dict.fromkeys(c.image_id for c in dataset.captions))
        index = {im: i for i, im in enumerate(self.image_ids)}
        self.caption_image = np.array([index[c.image_id] for c in dataset.captions], dtype=np.int64)
        self.captions_of = [dataset.captions_of(im) for im in self.image_ids]
        self.current_step = 0
        if len(self.image_ids) < negatives.pool_size + 1:
            raise ConfigError(
                f"negatives.pool_size={negatives.pool_size} needs at least {negatives.pool_size + 1} training "
                f"images, the split has {len(self.image_ids)}"
            )

    # ------------------------------------------------------------------ batch building (DataLoader workers)
    def build_batch(self, items: list[int], generator: torch.Generator) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        pos_caps = np.asarray(items, dtype=np.int64)
        pos_imgs = self.caption_image[pos_caps]
        m = self.neg.pool_size
        pool_imgs = rng.choice(len(self.image_ids), m, replace=False)
        cap_src_imgs = rng.choice(len(self.image_ids), m, replace=False)
        pool_caps = np.array([rng.choice(self.captions_of[i]) for i in cap_src_imgs], dtype=np.int64)
        records = [self.ds.record(self.image_ids[i]) for i in np.concatenate([pos_imgs, pool_imgs])]
        texts = [self.ds.captions[c].text for c in np.concatenate([pos_caps, pool_caps])]
        regions = self.collator.encode_regions(records)
        text = self.collator.encode_text(texts)
        b = len(pos_caps)
        img_wrong = pool_imgs[None, :] != pos_imgs[:, None]  # [B, M]
        cap_wrong = self.caption_image[pool_caps][None, :] != pos_imgs[:, None]
        batch: dict[str, Any] = {
            "pos_index": torch.arange(b),  # first tensor: the Trainer counts samples by it
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "region_features": regions["region_features"],
            "region_locations": regions["region_locations"],
            "region_mask": regions["region_mask"],
            "image_keys": torch.from_numpy(pos_imgs),
            "img_wrong": torch.from_numpy(img_wrong),
            "cap_wrong": torch.from_numpy(cap_wrong),
        }
        # random negatives always travel with the batch: they are used before `hard_start_step`
        k = self.neg.num_negatives
        batch["neg_img"] = torch.from_numpy(self._random_wrong(rng, img_wrong, k))
        batch["neg_cap"] = torch.from_numpy(self._random_wrong(rng, cap_wrong, k))
        batch["mine_seed"] = torch.tensor([int(rng.integers(0, 2**62))])
        return batch

    def mining_active(self) -> bool:
        """Whether this step trains on mined negatives (`current_step` is set by the Trainer)."""
        return self.neg.hard and self.current_step >= self.neg.hard_start_step

    @staticmethod
    def _random_wrong(rng: np.random.Generator, wrong: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((wrong.shape[0], k), dtype=np.int64)
        for r in range(wrong.shape[0]):
            out[r] = rng.choice(np.nonzero(wrong[r])[0], k, replace=False)
        return out

    # ------------------------------------------------------------------ loss (main process)
    @staticmethod
    def _pair_inputs(
        batch: dict[str, Any], text_rows: torch.Tensor, image_rows: torch.Tensor
    ) -> dict[str, Any]:
        am = batch["attention_mask"][text_rows]
        rm = batch["region_mask"][image_rows]
        t_len = int(am.sum(1).max())
        r_len = int(rm.sum(1).max())
        return {
            "input_ids": batch["input_ids"][text_rows, :t_len],
            "attention_mask": am[:, :t_len],
            "region_features": batch["region_features"][image_rows, :r_len],
            "region_locations": batch["region_locations"][image_rows, :r_len],
            "region_mask": rm[:, :r_len],
        }

    @torch.no_grad()
    def mine(
        self, core: nn.Module, batch: dict[str, Any], chunk: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hardest wrong pool candidates per positive, both directions: (neg_img [B, P-1], neg_cap [B, P-1])."""
        b = batch["pos_index"].shape[0]
        m = batch["img_wrong"].shape[1]
        dev = batch["input_ids"].device
        rows = torch.arange(b, device=dev).repeat_interleave(m)
        pool = torch.arange(m, device=dev).repeat(b) + b  # pool items follow the B positives
        margin = self.neg.false_negative_margin
        with eval_mode(core):
            if self.neg.hard_source == "itc":
                scores, positive = self._itc_pool_scores(core, batch, b, m)
            else:
                scores = []
                # caption b against the pool images, then image b against the pool captions
                for text_rows, image_rows in ((rows, pool), (pool, rows)):
                    scores.append(self._model_scores(core, batch, text_rows, image_rows, chunk).view(b, m))
                positive = None
                if margin is not None:
                    pos = torch.arange(b, device=dev)
                    positive = self._model_scores(core, batch, pos, pos, chunk)
        k = self.neg.num_negatives
        gen = torch.Generator().manual_seed(int(batch["mine_seed"].reshape(-1)[0]))
        neg_img = self._pick(scores[0], batch["img_wrong"], positive, k, gen)
        neg_cap = self._pick(scores[1], batch["cap_wrong"], positive, k, gen)
        return torch.from_numpy(neg_img).to(dev), torch.from_numpy(neg_cap).to(dev)

    def _model_scores(
        self,
        core: nn.Module,
        batch: dict[str, Any],
        text_rows: torch.Tensor,
        image_rows: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        out = []
        for s in range(0, len(text_rows), chunk):
            inp = self._pair_inputs(batch, text_rows[s : s + chunk], image_rows[s : s + chunk])
            out.append(core(**inp).scores.float().reshape(-1))
        return torch.cat(out)

    def _pick(
        self,
        scores: torch.Tensor,
        wrong: torch.Tensor,
        positive: torch.Tensor | None,
        k: int,
        gen: torch.Generator,
    ) -> np.ndarray:
        """k wrong candidates per row: `hard_fraction` of them mined (among those not suspected to be unlabelled
        matches), the rest drawn at random from the remaining wrong ones."""
        scores = scores.detach().float().cpu()
        wrong = torch.as_tensor(wrong).cpu().bool()
        n_hard = min(k, max(1, round(k * self.neg.hard_fraction)))
        eligible = wrong
        if positive is not None and self.neg.false_negative_margin is not None:
            limit = positive.detach().float().cpu().reshape(-1, 1) - self.neg.false_negative_margin
            eligible = wrong & (scores <= limit)
            short = eligible.sum(dim=1) < n_hard  # too few left: mine among every wrong one in that row
            eligible = torch.where(short[:, None], wrong, eligible)
        hard = select_hard(scores, eligible, n_hard, temperature=self.neg.hard_temperature, generator=gen)
        if n_hard == k:
            return hard
        rest = wrong.clone().numpy()
        rest[np.arange(len(rest))[:, None], hard] = False
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
        return np.concatenate([hard, self._random_wrong(rng, rest, k - n_hard)], axis=1)

    def _itc_pool_scores(
        self, core: nn.Module, batch: dict[str, Any], b: int, m: int
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Contrastive similarities: positives' captions vs pool images, positives' images vs pool captions, and
        each positive pair's own similarity."""
        everything = torch.arange(b + m, device=batch["input_ids"].device)
        inp = self._pair_inputs(batch, everything, everything)
        text = core.encode_text(inp["input_ids"], inp["attention_mask"])
        image = core.encode_image(inp["region_features"], inp["region_locations"], inp["region_mask"])
        positive = (text[:b] * image[:b]).sum(dim=1)
        return [text[:b] @ image[b:].t(), image[:b] @ text[b:].t()], positive

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The full fine-tuning loss. The Trainer calls this inside the DDP-wrapped forward (`TaskLoss`) with the
        bare model, so the contrastive passes and mining below are part of the synchronised forward."""
        core = model.module if hasattr(model, "module") else model  # a caller passing a DDP model still works
        b = batch["pos_index"].shape[0]
        dev = batch["input_ids"].device
        if self.mining_active():
            neg_img, neg_cap = self.mine(core, batch)
        else:
            neg_img, neg_cap = batch["neg_img"].to(dev), batch["neg_cap"].to(dev)
        k = neg_img.shape[1]
        pos = torch.arange(b, device=dev)
        rep = pos.repeat_interleave(k)
        # positives; caption b with k wrong images; image b with k wrong captions
        text_rows = torch.cat([pos, rep, neg_cap.reshape(-1) + b])
        image_rows = torch.cat([pos, neg_img.reshape(-1) + b, rep])
        scores = core(**self._pair_inputs(batch, text_rows, image_rows)).scores.float()
        pos_s = scores[:b]
        t2i = scores[b : b + b * k].view(b, k)
        i2t = scores[b + b * k :].view(b, k)
        total, parts = retrieval_loss(pos_s, torch.stack([i2t, t2i], dim=1), self.weights)
        if self.weights.itc:
            inp = self._pair_inputs(batch, pos, pos)
            t = core.encode_text(inp["input_ids"], inp["attention_mask"])
            i = core.encode_image(inp["region_features"], inp["region_locations"], inp["region_mask"])
            scale = core.itc_logit_scale.exp().clamp(max=100.0)
            v = contrastive_loss(t, i, scale=scale, image_keys=batch["image_keys"].to(dev))
            total = total + self.weights.itc * v
            parts["itc"] = v.detach()
        return total, parts


# --------------------------------------------------------------------------- checkpoint contents


class _CheckpointExtras:
    """Save hook: the tokenizer, and the step's validation numbers as `validation.json` / `retrieval.json` (the
    latter marks a fine-tuned checkpoint for evaluation). Validation itself is an evaluation callback."""

    def __init__(self, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.meta = meta
        self.trainer: Any = None

    def __call__(self, ckpt_dir: Path) -> None:
        self.tokenizer.save_pretrained(ckpt_dir)
        t = self.trainer
        record = dict(t.last_metrics) if t is not None and t._metrics_step == t.step else {}
        (ckpt_dir / "validation.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        (ckpt_dir / RETRIEVAL_META).write_text(
            json.dumps({**self.meta, **record}, indent=2), encoding="utf-8"
        )


def run_finetuning(
    config: FinetuneConfig,
    out_dir: str | Path | None = None,
    *,
    train_dataset: Any = None,
    val_dataset: Any = None,
    resume: str | Path | None = None,
) -> Path:
    """Fine-tune; returns the best checkpoint folder (`<out>/best`, by validation R-sum; the final one when
    validation is off). `train_dataset`/`val_dataset` (PairDataset-like) replace loading `config.dataset`."""
    from imagebert.modeling import (
        ImageBertForRetrieval,
        ImageBertProcessor,
        default_bert_path,
        load_tokenizer,
    )
    from imagebert.retrieval.evaluate import gallery_from_dataset
    from imagebert.retrieval.scorers import ModelPairScorer
    from imagebert.retrieval.validation import RetrievalValidator, make_gallery_plan, make_plan
    from imagebert.runtime.distributed import init_distributed, shutdown
    from imagebert.training.trainer import Trainer

    config.validate()
    out = Path(out_dir or config.out_dir)
    info = init_distributed(config.training.device)
    try:
        if train_dataset is None or (config.validation is not None and val_dataset is None):
            if config.dataset is None:
                raise ConfigError("dataset: name a dataset YAML (or pass datasets to run_finetuning)")
            from imagebert.data.dataset import PairDataset, load_dataset_spec

            spec = load_dataset_spec(config.dataset)
            if train_dataset is None:
                train_dataset = PairDataset(spec, split=config.train_split)
            if config.validation is not None and val_dataset is None:
                val_dataset = PairDataset(spec, split=config.validation.split)
        torch.manual_seed(config.training.seed)
        if config.init_checkpoint:
            model = ImageBertForRetrieval.from_pretrained(config.init_checkpoint)
            for key, value in config.model.items():
                if value != "auto":  # sizes come from the checkpoint
                    setattr(model.config, key, value)
            ck = Path(config.init_checkpoint)
            tokenizer = load_tokenizer(
                ck if (ck / "vocab.txt").is_file() or (ck / "tokenizer.json").is_file() else None
            )
        else:
            bert = Path(config.init_from_bert) if config.init_from_bert else default_bert_path()
            sizes = resolve_auto_sizes(
                config.model, [train_dataset], f"dataset {config.dataset or ''}".strip()
            )
            model = ImageBertForRetrieval.init_from_bert(bert, **sizes)
            tokenizer = load_tokenizer(bert)
        # a checkpoint from before standardisation existed, or a fresh BERT start, measures it on this data
        install_feature_stats(model, [train_dataset])
        mc = model.config
        # the model's processor: sizes from its config; saved with each checkpoint
        collator = ImageBertProcessor.from_config(mc, tokenizer)
        task = RetrievalTask(train_dataset, collator, config.negatives, config.loss)
        out.mkdir(parents=True, exist_ok=True)
        evaluators = []
        if config.validation is not None:  # every rank holds the callback; only rank 0 builds and runs it
            evaluators.append(RetrievalValidator(None, None, out / "validation.jsonl"))
        if config.validation is not None and info.is_main:
            v = config.validation
            gallery = gallery_from_dataset(val_dataset)
            if v.num_images > 0:
                plan = make_gallery_plan(gallery, v.num_images, v.seed)
                gallery = plan.gallery
            else:
                plan = make_plan(gallery, v.num_queries, v.num_candidates, v.seed)
            evaluators[0].scorer = ModelPairScorer(model, collator, gallery, device=info.device,
                                                   precision=v.precision, batch_size=v.batch_size)  # fmt: skip
            evaluators[0].plan = plan
        meta = {"finetuned_from": config.init_checkpoint or str(config.init_from_bert or "bert"),
                "loss": to_dict(config.loss), "negatives": to_dict(config.negatives)}  # fmt: skip
        extras = _CheckpointExtras(collator, meta)  # saves the processor (tokenizer + processor_config.json)
        trainer = Trainer(
            model,
            task,
            _Indices(len(train_dataset)),
            config.training,
            out,
            info,
            run_config_yaml=yaml.safe_dump(to_dict(config), sort_keys=False),
            stage_name="finetune",
            extra_save=extras,
            extra_meta={"task": "retrieval-finetune"},
            evaluators=evaluators,
            best_metric="val_rsum" if evaluators else None,
        )
        extras.trainer = trainer
        if config.loss.itc > 0:
            model.config.itc_trained_steps = int(model.config.itc_trained_steps) + trainer.total_steps
        final = trainer.train(resume_from=resume)
        best = out / "best"
        return best if best.is_dir() else final
    finally:
        shutdown(info)
