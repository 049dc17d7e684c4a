"""Multi-stage ImageBERT pre-training (paper sections 2, 4, 5): config, the four-task batch builder, the driver.

`run_pretraining(config)` runs every stage in order (stage k starts from stage k-1's final weights) and returns the
last stage's final checkpoint; it works the same in one process and under `torchrun`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from imagebert.config_utils import ConfigError, to_dict
from imagebert.data.masking import MaskingConfig, TextMasker, mask_regions
from imagebert.modeling.tasks import LEGACY_TRAINING_SWITCHES, PretrainingTasks, warn_legacy_switches
from imagebert.runtime.distributed import DistInfo, init_distributed, shutdown
from imagebert.training import checkpoint as ckpt
from imagebert.training.feature_stats import AUTO_SIZED, install_feature_stats, resolve_auto_sizes
from imagebert.training.pairs import PairPool, dataset_feature_dim
from imagebert.training.trainer import Trainer, TrainerConfig

log = logging.getLogger(__name__)

# Config fields that may differ between a loaded checkpoint and the run config (everything else is architecture).
_SWITCHABLE = ("task_", "loss_weight_", "mrfr_reduction", "validate_inputs", "itc_temperature", "hidden_dropout_prob",
               "attention_probs_dropout_prob")  # fmt: skip


@dataclass
class ItmConfig:
    """ITM negatives. Paper: a random caption per image and a random image per caption; the ratio and the split
    between the two directions are not given (UNCONFIRMED): half the pairs negative, half of those each way."""

    negative_ratio: float = 0.5
    caption_swap_fraction: float = (
        0.5  # of the negatives: keep the image, swap in a random caption (rest: swap image)
    )
    # Share of the negatives whose other half comes from the same batch, drawn in proportion to the contrastive
    # (ITC) similarity, ALBEF-style, so ITM sees pairs that are hard to tell apart (needs tasks.itc). 0 = all
    # random from the data (the paper). All in-batch (1.0) kept ITM at chance on the demo (docs/training.md).
    itc_negative_fraction: float = 0.0
    # Before this optimizer step the in-batch partner is drawn uniformly (a plain random negative), so ITM first
    # learns the easy part; mining from the start kept ITM at chance twice as long on the demo (docs/training.md).
    itc_negative_start_step: int = 0


def check_in_batch_negatives(itm: ItmConfig, *, itc: bool) -> None:
    """In-batch ITM negatives are drawn by ITC similarity, so they need the ITC task."""
    if itm.itc_negative_fraction > 0 and not itc:
        raise ConfigError(
            "itm.itc_negative_fraction draws negatives by ITC similarity: "
            "set tasks.itc=true or itm.itc_negative_fraction=0"
        )


@dataclass
class StageConfig:
    """One pre-training stage. `datasets` are dataset YAML files (imagebert.data.load_dataset_spec)."""

    name: str
    datasets: list[str] = field(default_factory=list)
    split: str = "train"
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None  # per process; default training.batch_size
    learning_rate: float | None = None  # default training.learning_rate
    warmup_ratio: float | None = None
    warmup_steps: int | None = None


@dataclass
class PretrainConfig:
    """The `imagebert pretrain` config. `model` holds ImageBertConfig overrides (e.g. visual_feature_dim);
    `tasks` the losses and their weights (old `model.task_*`, `model.loss_weight_*`: deprecated aliases)."""

    stages: list[StageConfig]
    out_dir: str = "runs/pretrain"
    init_from_bert: str | None = None  # BERT folder; None = imagebert.modeling.default_bert_path() (MiniLM)
    init_from_checkpoint: str | None = None  # an ImageBERT checkpoint folder instead of BERT
    model: dict[str, Any] = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    itm: ItmConfig = field(default_factory=ItmConfig)
    training: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=1))
    tasks: PretrainingTasks = field(default_factory=PretrainingTasks)
    validate_inputs: bool = True  # check batches for NaN/inf in the model's forward (one host sync per step)

    def validate(self, *, check_paths: bool = True) -> None:
        """Everything that can be checked without loading data: names the offending key. check_paths=False
        skips the file checks (load_pretrain_config calls this once the paths are resolved)."""
        from imagebert.modeling import ImageBertConfig

        if not self.stages:
            raise ConfigError("stages: list at least one stage")
        _move_legacy_switches(self)
        fields = set(ImageBertConfig.__dataclass_fields__)
        for key, value in self.model.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown config key 'model.{key}'; see imagebert.modeling.ImageBertConfig for the fields"
                )
            if value == "auto" and key not in AUTO_SIZED:
                raise ConfigError(f"model.{key}: 'auto' is only allowed for {', '.join(AUTO_SIZED)}")
        if self.init_from_bert and self.init_from_checkpoint:
            raise ConfigError("set at most one of 'init_from_bert' and 'init_from_checkpoint'")
        if not 0 <= self.itm.negative_ratio < 1:
            raise ConfigError(f"itm.negative_ratio must lie in [0, 1), got {self.itm.negative_ratio}")
        if not 0 <= self.itm.caption_swap_fraction <= 1:
            raise ConfigError(
                f"itm.caption_swap_fraction must lie in [0, 1], got {self.itm.caption_swap_fraction}"
            )
        if self.itm.itc_negative_start_step < 0:
            raise ConfigError(
                f"itm.itc_negative_start_step must be >= 0, got {self.itm.itc_negative_start_step}"
            )
        if not 0 <= self.itm.itc_negative_fraction <= 1:
            raise ConfigError(
                f"itm.itc_negative_fraction must lie in [0, 1], got {self.itm.itc_negative_fraction}"
            )
        check_in_batch_negatives(self.itm, itc=self.tasks.itc)
        if check_paths:
            for key in ("init_from_bert", "init_from_checkpoint"):
                value = getattr(self, key)
                if value is not None and not (Path(value) / "config.json").is_file():
                    raise ConfigError(f"{key}: {value} is not a checkpoint folder (no config.json)")
        names = set()
        for i, stage in enumerate(self.stages):
            if stage.name in names:
                raise ConfigError(f"stages[{i}].name: '{stage.name}' is used twice")
            names.add(stage.name)
            stage_trainer_config(self, stage).validate(prefix=f"stages[{i}] ({stage.name})")
            if check_paths:
                if not stage.datasets:
                    raise ConfigError(f"stages[{i}].datasets: name at least one dataset YAML")
                for j, d in enumerate(stage.datasets):
                    if not Path(d).is_file():
                        raise ConfigError(f"stages[{i}].datasets[{j}]: file not found: {d}")


def load_pretrain_config(
    path: str | Path | None, overrides: list[str] | None = None, *, check_paths: bool = True
) -> PretrainConfig:
    """Read a pretrain YAML, apply `--set` overrides, validate. Relative paths resolve against the YAML's folder
    (or, when they only exist there, the working directory).

    check_paths=False skips the file checks (for inspecting a config on a machine without the data)."""
    from imagebert.config_utils import load_config

    cfg = load_config(PretrainConfig, path, overrides)
    base = Path(path).resolve().parent if path is not None else Path.cwd()

    def resolve(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        if q.is_absolute():
            return os.path.normpath(q)
        # relative to the config file; a path that only exists from the working directory (typical for
        # `--set` on the command line) is taken from there
        if not (base / q).exists() and (Path.cwd() / q).exists():
            return os.path.normpath(Path.cwd() / q)
        return os.path.normpath(base / q)

    for stage in cfg.stages:
        stage.datasets = [resolve(d) for d in stage.datasets]
    cfg.init_from_bert = resolve(cfg.init_from_bert)
    cfg.init_from_checkpoint = resolve(cfg.init_from_checkpoint)
    cfg.validate(check_paths=check_paths)
    return cfg


def stage_trainer_config(cfg: PretrainConfig, stage: StageConfig) -> TrainerConfig:
    """training defaults + this stage's settings. A stage naming steps/epochs replaces both training fields."""
    t = dataclasses.replace(cfg.training, adam_betas=list(cfg.training.adam_betas))
    if stage.epochs is not None or stage.steps is not None:
        t.epochs, t.steps = stage.epochs, stage.steps
    for key in ("batch_size", "learning_rate", "warmup_ratio", "warmup_steps"):
        if getattr(stage, key) is not None:
            setattr(t, key, getattr(stage, key))
    return t


def validate_config(cfg: PretrainConfig, *, check_paths: bool = True) -> None:
    """Deprecated alias of PretrainConfig.validate."""
    cfg.validate(check_paths=check_paths)


def _move_legacy_switches(cfg: PretrainConfig) -> None:
    """`model.task_itc=true` and friends (the switches' old home) -> `tasks.itc` etc., with a warning."""
    legacy = {k: cfg.model.pop(k) for k in list(cfg.model) if k in LEGACY_TRAINING_SWITCHES}
    if not legacy:
        return
    warn_legacy_switches(legacy, "pretrain config 'model'")
    if "validate_inputs" in legacy:
        cfg.validate_inputs = bool(legacy.pop("validate_inputs"))
    try:
        cfg.tasks = cfg.tasks.with_legacy(legacy)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from exc


class PretrainTask:
    """Builds four-task batches (negatives, collation, masking) and computes the model's summed loss."""

    sample_unit = "pairs"  # one counted sample: an image-text pair (matched or negative)
    MODEL_KEYS = (
        "input_ids", "attention_mask", "region_features", "region_locations", "region_mask", "mlm_labels",
        "region_masked", "moc_labels", "mrfr_targets", "itm_labels", "itc_input_ids", "itc_attention_mask",
        "itm_swap", "pair_groups",
    )  # fmt: skip

    def __init__(
        self,
        pool: PairPool,
        tokenizer: Any,
        model_config: Any,
        masking: MaskingConfig,
        itm: ItmConfig,
        tasks: PretrainingTasks | None = None,
    ) -> None:
        """`tokenizer` is an ImageBertProcessor (or a bare tokenizer: a processor is built with the config's
        sizes); `tasks` default to the model config's deprecated switches, else PretrainingTasks()."""
        from imagebert.modeling.processing import ImageBertProcessor

        self.pool = pool
        self.itm = itm
        self.masking = masking
        if tasks is None:
            tasks = PretrainingTasks().with_legacy(getattr(model_config, "legacy_training_switches", {}))
        self.tasks = tasks
        self.use_itm = tasks.itm and itm.negative_ratio > 0
        self.use_itc = tasks.itc
        self.current_step = 0  # set by the Trainer before each step (the in-batch negatives' warm-up)
        if self.use_itm:
            check_in_batch_negatives(itm, itc=self.use_itc)
        # Chance-level losses for the learning-health monitor: ITM's constant-prediction BCE at this negative rate.
        p = itm.negative_ratio
        self.chance_losses = (
            {"itm": -(p * math.log(p) + (1 - p) * math.log(1 - p))} if self.use_itm and 0 < p < 1 else {}
        )
        if isinstance(tokenizer, ImageBertProcessor):
            tokenizer.check_model(model_config)
            self.processor = tokenizer
        else:
            self.processor = ImageBertProcessor.from_config(model_config, tokenizer)
        self.collator = self.processor.collator
        self.text_masker = TextMasker.from_tokenizer(self.processor.tokenizer, masking)

    def choose_pairs(self, items: list[tuple[int, Any, Any]], gen: torch.Generator) -> tuple[list, list[int]]:
        """Turn some matched pairs into negatives; returns ((record, text) pairs, itm labels)."""
        pairs, labels, _ = self.choose_negatives(items, gen)
        return pairs, labels

    def choose_negatives(
        self, items: list[tuple[int, Any, Any]], gen: torch.Generator
    ) -> tuple[list, list[int], tuple[torch.Tensor, torch.Tensor] | None]:
        """Like choose_pairs, plus (itm_swap, pair_groups) when some negatives are to be drawn inside the batch
        by ITC similarity (itm.itc_negative_fraction > 0): those rows keep their matched pair here, label 0, and
        the model swaps in another row's caption (itm_swap 1) or image (2) of a different image group."""
        n = len(items)
        labels = [1] * n
        pairs = [(rec, cap.text) for _, cap, rec in items]
        if not self.use_itm or n == 0:
            return pairs, labels, None
        # Stochastic rounding keeps the expected ratio exact even for tiny batches.
        u = float(torch.rand((), generator=gen))
        n_neg = min(n, int(math.floor(n * self.itm.negative_ratio + u)))
        order = torch.randperm(n, generator=gen).tolist()
        swap_caption = torch.rand(n, generator=gen) < self.itm.caption_swap_fraction
        negatives = order[:n_neg]
        swaps, in_batch = None, set()
        if self.itm.itc_negative_fraction > 0:
            group_of: dict[Any, int] = {}
            groups = [group_of.setdefault((d, cap.image_id), len(group_of)) for d, cap, _ in items]
            drawn = torch.rand(n, generator=gen) < self.itm.itc_negative_fraction
            in_batch = {i for i in negatives if bool(drawn[i])}
            # a swapped row needs a matched row (unswapped positive or swapped) of another image; random negatives
            # are not matched pairs. Rows without one (a batch of one image, say) take a random negative below.
            while in_batch:
                matched_groups = {groups[j] for j in range(n) if j not in negatives or j in in_batch}
                lonely = {i for i in in_batch if matched_groups <= {groups[i]}}
                if not lonely:
                    break
                in_batch -= lonely
            swap = torch.zeros(n, dtype=torch.long)
            for i in in_batch:
                swap[i], labels[i] = (1 if bool(swap_caption[i]) else 2), 0
            swaps = (swap, torch.tensor(groups, dtype=torch.long))
        for i in negatives:
            if i in in_batch:
                continue
            d, cap, rec = items[i]
            if bool(swap_caption[i]):
                other = self.pool.random_caption((d, cap.image_id), gen)
                if other is not None:
                    pairs[i], labels[i] = (rec, other.text), 0
            else:
                other_rec = self.pool.random_record((d, cap.image_id), gen)
                if other_rec is not None:
                    pairs[i], labels[i] = (other_rec, cap.text), 0
        return pairs, labels, swaps

    def build_batch(self, items: list[tuple[int, Any, Any]], generator: torch.Generator) -> dict[str, Any]:
        pairs, labels, swaps = self.choose_negatives(items, generator)
        batch = self.collator(pairs)
        if swaps is not None:
            batch["itm_swap"], batch["pair_groups"] = swaps
        if self.use_itc:  # the contrastive passes read the words before masking
            batch["itc_input_ids"] = batch["input_ids"].clone()
            batch["itc_attention_mask"] = batch["attention_mask"]
        batch["input_ids"], batch["mlm_labels"] = self.text_masker(
            batch["input_ids"], batch["attention_mask"], generator
        )
        masks = mask_regions(
            batch["region_features"],
            batch["region_mask"],
            batch.get("region_class_ids"),
            self.masking,
            generator,
        )
        batch["region_features"] = masks.region_features
        batch["region_masked"] = masks.region_masked
        batch["moc_labels"] = masks.moc_labels
        batch["mrfr_targets"] = masks.mrfr_targets
        batch["itm_labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: batch[k] for k in self.MODEL_KEYS if k in batch}
        if "itm_swap" in inputs:
            inputs["itm_swap_by_similarity"] = self.current_step >= self.itm.itc_negative_start_step
        out = model(**inputs)
        parts = {
            name: getattr(out, f"{name}_loss")
            for name in ("mlm", "moc", "mrfr", "itm", "itc")
            if getattr(out, f"{name}_loss", None) is not None
        }
        if "itm" in parts and out.itm_logits is not None:
            labels = batch["itm_labels"].to(out.itm_logits.device)
            parts["itm_acc"] = ((out.itm_logits.detach() > 0).long() == labels).float().mean()
            if "itm_swap" in batch:
                # the paper's ITM (positives against random negatives) beside the mix that includes the harder
                # in-batch negatives, so runs with and without them compare on the same measure
                plain = batch["itm_swap"].to(labels.device) == 0
                parts["itm_random"] = F.binary_cross_entropy_with_logits(
                    out.itm_logits.detach()[plain], labels[plain].float()
                )
        return out.loss, parts


DatasetFactory = Callable[[StageConfig], Sequence[Any]]


def load_stage_datasets(stage: StageConfig) -> list[Any]:
    """The default dataset factory: each YAML through load_dataset_spec + PairDataset(split)."""
    from imagebert.data.dataset import PairDataset, load_dataset_spec

    out = []
    for j, path in enumerate(stage.datasets):
        try:
            spec = load_dataset_spec(path)
        except ConfigError as exc:
            raise ConfigError(f"stages ({stage.name}).datasets[{j}]: {exc}") from exc
        out.append(PairDataset(spec, split=stage.split))
    return out


def _apply_switches(model: nn.Module, overrides: dict[str, Any], source: str) -> None:
    """On a loaded ImageBERT checkpoint only task switches / weights may change; architecture must match."""
    for key, value in overrides.items():
        if value == "auto":  # sizes come from the checkpoint
            continue
        if key.startswith(_SWITCHABLE) or key in _SWITCHABLE:
            setattr(model.config, key, value)
        elif getattr(model.config, key, None) != value:
            raise ConfigError(
                f"model.{key}={value!r} differs from {source} ({getattr(model.config, key, None)!r}); "
                "architecture fields cannot change between stages"
            )


def _token_ids(tokenizer: Any) -> dict[str, int]:
    from imagebert.modeling import ImageBertConfig

    fields = ImageBertConfig.__dataclass_fields__
    ids = {"sep_token_id": tokenizer.sep_token_id, "cls_token_id": tokenizer.cls_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    return {k: int(v) for k, v in ids.items() if k in fields and v is not None}


def _check_dims(cfg_model: Any, datasets: Sequence[Any], stage: StageConfig) -> None:
    want = int(cfg_model.visual_feature_dim)
    for j, ds in enumerate(datasets):
        dim = dataset_feature_dim(ds)
        if dim is not None and dim != want:
            where = stage.datasets[j] if j < len(stage.datasets) else f"dataset {j}"
            raise ConfigError(
                f"model.visual_feature_dim is {want} but the feature store of stage '{stage.name}' ({where}) has "
                f"{dim}-d features; set model.visual_feature_dim: {dim}"
            )


def _resolve_resume(resume: str | Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    if resume is None:
        return None, None
    found = ckpt.find_latest_checkpoint(Path(resume))
    if found is None:
        raise ConfigError(f"--resume: no checkpoint found in {resume}")
    return found, ckpt.read_meta(found)


def run_pretraining(
    config: PretrainConfig,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    *,
    dataset_factory: DatasetFactory | None = None,
    dist_info: DistInfo | None = None,
) -> Path:
    """Run all stages; returns the final checkpoint of the last stage (`<out>/<k>-<name>/final`).

    dataset_factory(stage) -> list of pair datasets replaces the YAML loading (tests, the demo, in-memory data).
    resume: a checkpoint folder or a run folder (its newest checkpoint is used); finished stages are skipped.
    """
    from imagebert.modeling import (
        ImageBertForPreTraining,
        ImageBertProcessor,
        default_bert_path,
        load_tokenizer,
    )

    config.validate(check_paths=dataset_factory is None)
    out = Path(out_dir or config.out_dir)
    factory = dataset_factory or load_stage_datasets
    info = dist_info or init_distributed(config.training.device)
    own_dist = dist_info is None
    resume_path, resume_meta = _resolve_resume(resume)
    config_yaml = yaml.safe_dump(to_dict(config), sort_keys=False)
    try:
        bert_dir = Path(config.init_from_bert) if config.init_from_bert else default_bert_path()
        tok_dir = bert_dir
        ck = Path(config.init_from_checkpoint) if config.init_from_checkpoint else None
        if ck is not None and ((ck / "vocab.txt").is_file() or (ck / "tokenizer.json").is_file()):
            tok_dir = Path(config.init_from_checkpoint)
        tokenizer = load_tokenizer(tok_dir)
        previous: Path | None = None
        final: Path | None = None
        for index, stage in enumerate(config.stages):
            stage_dir = out / f"{index + 1}-{stage.name}"
            resume_here = None
            if resume_meta is not None:
                r_stage = int(resume_meta.get("stage_index", 0))
                if index < r_stage or (index == r_stage and resume_meta.get("final")):
                    # finished stages live next to the resumed checkpoint's stage folder (<run>/<k>-<name>/final)
                    done = resume_path.parent.parent / f"{index + 1}-{stage.name}" / "final"
                    previous = final = resume_path if index == r_stage else done
                    if not (final / "config.json").is_file():
                        raise ConfigError(
                            f"--resume: stage '{stage.name}' has no final checkpoint at {final}"
                        )
                    continue
                if index == r_stage:
                    resume_here = resume_path
            datasets = list(factory(stage))
            if not datasets:
                raise ConfigError(f"stage '{stage.name}': no datasets")
            torch.manual_seed(config.training.seed + index)  # head initialisation is seeded too
            if previous is not None:
                model = ImageBertForPreTraining.from_pretrained(previous)
                _apply_switches(model, config.model, str(previous))
            elif config.init_from_checkpoint:
                model = ImageBertForPreTraining.from_pretrained(config.init_from_checkpoint)
                _apply_switches(model, config.model, config.init_from_checkpoint)
            else:
                # the model inserts [SEP] itself: take its id from the tokenizer unless the config says otherwise
                model_cfg = resolve_auto_sizes(config.model, datasets, f"stage '{stage.name}'")
                overrides = {**_token_ids(tokenizer), **model_cfg}
                model = ImageBertForPreTraining.init_from_bert(bert_dir, **overrides)
            _check_dims(model.config, datasets, stage)
            model.tasks, model.validate_inputs = config.tasks, config.validate_inputs  # training choices
            # standardisation statistics come from the first stage's data and then travel with the weights
            install_feature_stats(model, datasets)
            pool = PairPool(datasets)
            processor = ImageBertProcessor.from_config(model.config, tokenizer)  # saved with every checkpoint
            task = PretrainTask(pool, processor, model.config, config.masking, config.itm, tasks=config.tasks)
            tcfg = stage_trainer_config(config, stage)
            tcfg.seed = config.training.seed + 1000 * index
            lengths = pool.lengths(model.config.max_regions) if tcfg.bucket_by_length else None
            trainer = Trainer(
                model,
                task,
                pool,
                tcfg,
                stage_dir,
                info,
                lengths=lengths,
                run_config_yaml=config_yaml,
                stage_index=index,
                stage_name=stage.name,
                extra_save=processor.save_pretrained,
                extra_meta={"num_stages": len(config.stages)},
            )
            if config.tasks.itc and config.tasks.itc_weight > 0:
                # recorded before the first checkpoint so every checkpoint of this stage says so
                model.config.itc_trained_steps = int(model.config.itc_trained_steps) + trainer.total_steps
            if info.is_main:
                log.info("stage %d/%d '%s': %d pairs, %d steps", index + 1, len(config.stages), stage.name,
                         len(pool), trainer.total_steps)  # fmt: skip
            final = trainer.train(resume_from=resume_here)
            previous = final
        assert final is not None
        return final
    finally:
        if own_dist:
            shutdown(info)
