"""The generic training loop: optimisation, precision, DDP, checkpoints, logging, NaN stops and evaluation hooks.

What is trained is left to a `TrainTask` (batch builder + loss), so pre-training and retrieval fine-tuning share
this loop. The task's whole loss runs inside one module's forward (`TaskLoss`), and that module is what DDP wraps:
every model call a loss makes (pair scores, contrastive single-modality passes, mining) is then inside the
synchronised forward, so no loss has to be refused under multi-process training. What the run is judged by is left
to evaluation callbacks (`Evaluator`): called every `evaluate_every` steps (or with every checkpoint), their
metrics are logged and one of them (`best_metric`) can keep the best state in `out_dir/best`.
Reproducibility rests on three rules:
  * every batch is built by `task.build_batch(items, generator)` with a generator seeded from
    (seed, epoch, global batch index), so masks and negatives never depend on what ran before;
  * the data order is a pure function of (seed, epoch, world size) (`ShardedBatchSampler`);
  * the only other randomness (dropout) uses the global RNGs, which checkpoints save and restore per rank.
So a run resumed from step k reproduces an uninterrupted run's losses step for step (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imagebert.runtime.allocator import ALLOCATOR_SETTINGS, tune_cpu_allocator
from imagebert.runtime.attention import ATTENTION_SETTINGS, set_attention
from imagebert.runtime.compile import (
    COMPILE_AUTO_MIN_STEPS,
    COMPILE_SETTINGS,
    compile_for_training,
    resolve_compile,
)
from imagebert.runtime.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
)
from imagebert.runtime.modes import eval_mode, preserve_modes
from imagebert.runtime.precision import MasterWeights, autocast, resolve_precision
from imagebert.training import checkpoint as ckpt
from imagebert.training.health import ChanceMonitor
from imagebert.training.optim import build_optimizer, build_scheduler
from imagebert.training.sampler import ShardedBatchSampler

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Optimisation and bookkeeping settings. Defaults for what the paper leaves open are documented in
    docs/training.md (warm-up 10%, weight decay 0.01, BERT's Adam settings, clipping at 1.0)."""

    batch_size: int = (
        48  # per process (per GPU); the global batch is batch_size * world_size * grad_accum_steps
    )
    learning_rate: float = 1e-4
    epochs: int | None = None  # exactly one of epochs / steps
    steps: int | None = None  # optimizer steps
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    num_workers: int = 0  # DataLoader worker processes building batches
    # Length bucketing (imagebert.training.sampler): on unless the task gives no lengths (pre-training gives them;
    # retrieval fine-tuning pairs each positive with a random negative pool, so it does not). Measured on real
    # batches (benchmarks/results/bucketing.md): padded slots 36% -> 24-29% with few, varying boxes (steps 1.22x
    # faster), 7.9% -> 5.5% with the paper's fixed 100 regions and random ITM negatives (which keep most of it).
    bucket_by_length: bool = True
    bucket_multiplier: int = 50
    checkpoint_every: int = 1000  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 42
    tensorboard: bool = True
    progress_bar: bool = True
    ddp_find_unused_parameters: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms (GPU kernels); CPU is deterministic
    num_threads: int | str | None = "auto"  # torch intra-op threads: N, or auto (imagebert.runtime.threads)
    # Learning health: warn when a task's mean loss over this many steps is still within `chance_tolerance`
    # (relative) of its chance level (tasks that declare one, e.g. ITM at ln 2). 0 turns the check off.
    chance_warning_steps: int = 100
    chance_tolerance: float = 0.03
    # Evaluation callbacks (given to the Trainer by the task's driver) run every this many optimizer steps and at
    # the end; 0 = with every checkpoint (periodic and final).
    evaluate_every: int = 0
    # torch.compile the encoder layers: off | on | auto (on for CUDA runs of >= 2000 steps; on a CPU the compile
    # time does not pay back, benchmarks/results/levers.md). Sequences are padded to multiples of 16 when on.
    compile: Literal["off", "on", "auto"] = "auto"
    # bf16: the model holds bf16 weights (no per-forward weight casts) and the optimizer fp32 masters; needs
    # precision bf16. Checkpoints hold the fp32 masters.
    weights: Literal["fp32", "bf16"] = "fp32"
    # the encoder's attention kernel: sdpa | eager | auto (eager on a CPU in bf16, where it was measured faster,
    # sdpa elsewhere); see imagebert.runtime.attention
    attention: Literal["auto", "sdpa", "eager"] = "sdpa"
    # CPU runs: tuned keeps freed tensor memory mapped (glibc malloc thresholds raised) instead of page-faulting
    # it back every step; system leaves malloc alone. See imagebert.runtime.allocator
    cpu_allocator: Literal["tuned", "system"] = "tuned"

    def validate(self, prefix: str = "training") -> None:
        from imagebert.config_utils import ConfigError

        if (self.epochs is None) == (self.steps is None):
            raise ConfigError(f"{prefix}: set exactly one of '{prefix}.epochs' and '{prefix}.steps'")
        for key in ("batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key} must be >= 1, got {getattr(self, key)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"{prefix}.epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{prefix}.steps must be >= 1, got {self.steps}")
        if self.learning_rate <= 0:
            raise ConfigError(f"{prefix}.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"{prefix}.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"{prefix}.adam_betas must have two values")
        if self.weights not in ("fp32", "bf16"):
            raise ConfigError(f"{prefix}.weights must be fp32 or bf16, got {self.weights!r}")
        if self.weights == "bf16" and self.precision != "bf16":
            raise ConfigError(
                f"{prefix}.weights: bf16 weights need {prefix}.precision: bf16 (got {self.precision!r})"
            )
        if self.compile not in COMPILE_SETTINGS:
            raise ConfigError(
                f"{prefix}.compile must be one of {', '.join(COMPILE_SETTINGS)}, got {self.compile!r}"
            )
        if self.attention not in ATTENTION_SETTINGS:
            raise ConfigError(
                f"{prefix}.attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {self.attention!r}"
            )
        if self.cpu_allocator not in ALLOCATOR_SETTINGS:
            raise ConfigError(
                f"{prefix}.cpu_allocator must be one of {', '.join(ALLOCATOR_SETTINGS)}, got {self.cpu_allocator!r}"
            )
        if self.evaluate_every < 0:
            raise ConfigError(
                f"{prefix}.evaluate_every must be >= 0 (0 = with each checkpoint), got {self.evaluate_every}"
            )
        if self.chance_warning_steps < 0:
            raise ConfigError(f"{prefix}.chance_warning_steps must be >= 0, got {self.chance_warning_steps}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"{prefix}.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        from imagebert.runtime.threads import parse_threads

        parse_threads(self.num_threads, f"{prefix}.num_threads")


class TrainTask(Protocol):
    """What the loop trains. `build_batch` runs in DataLoader workers (CPU); `compute_loss` in the main process."""

    def build_batch(self, items: list[Any], generator: torch.Generator) -> dict[str, Any]: ...

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and named parts (for logging and for naming the culprit of a NaN)."""
        ...


class Evaluator(Protocol):
    """An evaluation callback: metrics of `model` (the unwrapped model, in eval mode) after optimizer step `step`.

    Runs on rank 0 only unless it has a true `all_ranks` attribute; the returned numbers are broadcast, logged to
    metrics.jsonl / TensorBoard (as an `"event": "evaluation"` record) and stored in the checkpoint written at
    that step. RNG state and train/eval modes are restored afterwards, so evaluation never changes the run.
    """

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]: ...


class TaskLoss(nn.Module):
    """The model plus the task's loss as one module, so DDP wraps (and synchronises) the full loss computation.

    `forward(batch)` returns `task.compute_loss(model, batch)`; the task gets the bare model and may call it as
    often as it needs (pair scores, single-modality passes, mining without gradients) inside this one forward.
    """

    def __init__(self, model: nn.Module, task: TrainTask) -> None:
        super().__init__()
        self.model = model
        self._task = task  # not a module: holds no parameters

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._task.compute_loss(self.model, batch)


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient: the run stopped and the state before the bad step was saved."""

    def __init__(self, message: str, step: int, tasks: list[str], checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.tasks = tasks
        self.checkpoint = checkpoint


def batch_seed(seed: int, epoch: int, global_batch: int) -> int:
    """A batch's generator seed: independent of run history, different for every (epoch, batch)."""
    return (((seed & 0xFFFFFFFF) * 1_000_003 + epoch) * 1_000_003 + global_batch) % (2**63 - 1)


class _BatchBuilder(Dataset):
    """Item j of this 'dataset' is a whole built batch, so DataLoader workers build batches in parallel."""

    def __init__(
        self, dataset: Any, task: TrainTask, specs: list[tuple[int, int, int, list[int]]], seed: int
    ) -> None:
        self.dataset = dataset
        self.task = task
        self.specs = specs  # (epoch, batch_in_epoch, global_batch, indices)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, j: int) -> tuple[int, int, dict[str, Any]]:
        epoch, b, g, indices = self.specs[j]
        gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch, g))
        items = [self.dataset[i] for i in indices]
        return epoch, b, self.task.build_batch(items, gen)


def _identity(x: Any) -> Any:
    return x


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


class Trainer:
    """Train `model` on `dataset` (a map-style dataset of items handed to `task.build_batch`).

    out_dir receives checkpoints (`checkpoint-NNNNNNNN/`, `final/`), `metrics.jsonl` and `tb/`.
    `stage_index`/`stage_name` are bookkeeping for multi-stage runs; `extra_meta` goes into every checkpoint.
    `evaluators` are evaluation callbacks (see `Evaluator`); with `best_metric` (a key one of them returns) the
    state with the best value (`best_mode` "max" or "min") is saved as `out_dir/best`, and a resumed run must
    beat the value stored there.
    """

    def __init__(
        self,
        model: nn.Module,
        task: TrainTask,
        dataset: Any,
        config: TrainerConfig,
        out_dir: str | Path,
        dist_info: DistInfo | None = None,
        *,
        lengths: Sequence[int] | None = None,
        run_config_yaml: str | None = None,
        stage_index: int = 0,
        stage_name: str = "train",
        extra_save: Callable[[Path], None] | None = None,
        extra_meta: dict[str, Any] | None = None,
        evaluators: Sequence[Evaluator] = (),
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
    ) -> None:
        config.validate()
        if config.checkpoint_every < 0:  # the CLIs check it too; this guards the Python API
            from imagebert.config_utils import ConfigError

            raise ConfigError(
                f"training.checkpoint_every must be >= 0 (0 = only at the end), got {config.checkpoint_every}"
            )
        self.config = config
        self.task = task
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.run_config_yaml = run_config_yaml
        self.stage_index = stage_index
        self.stage_name = stage_name
        self.extra_save = extra_save
        self.extra_meta = extra_meta or {}
        self.evaluators = list(evaluators)
        if best_metric is not None and not self.evaluators:
            raise ValueError("best_metric needs at least one evaluator")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.best_value: float | None = None
        self.last_metrics: dict[str, Any] = {}  # of the latest evaluation (checkpoint hooks may read it)
        self._metrics_step: int | None = None
        if config.precision == "fp16" and self.device.type != "cuda":
            from imagebert.config_utils import ConfigError

            raise ConfigError("training.precision: fp16 needs a GPU (use bf16 on CPU)")
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        from imagebert.runtime.threads import apply_threads

        apply_threads(config.num_threads)
        if self.device.type == "cpu":
            tune_cpu_allocator(config.cpu_allocator)

        self.model = model.to(self.device)
        # before DDP, which sizes its buckets from the parameters' dtype
        self.master = MasterWeights(self.model) if config.weights == "bf16" else None
        self.loss_module = TaskLoss(self.model, task)
        if self.dist.distributed:
            kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.wrapped: nn.Module = nn.parallel.DistributedDataParallel(
                self.loss_module, find_unused_parameters=config.ddp_find_unused_parameters, **kwargs
            )
        else:
            self.wrapped = self.loss_module
        self._autocast_dtype = resolve_precision(config.precision, self.device)
        self.attention = set_attention(self.model, config.attention, self.device, self._autocast_dtype)
        self.extra_meta = {**self.extra_meta, "attention": self.attention}

        self.bucketing = bool(config.bucket_by_length and lengths is not None)
        self.extra_meta = {**self.extra_meta, "length_bucketing": self.bucketing}
        if config.bucket_by_length and lengths is None and self.dist.is_main:
            log.info("length bucketing: off (this task gives the sampler no lengths)")
        self.sampler = ShardedBatchSampler(
            len(dataset),
            config.batch_size,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            seed=config.seed,
            lengths=lengths if self.bucketing else None,
            bucket_multiplier=config.bucket_multiplier,
        )
        self.batches_per_epoch = self.sampler.batches_per_rank
        if self.batches_per_epoch < 1:
            from imagebert.config_utils import ConfigError

            raise ConfigError(
                f"stage '{stage_name}': {len(dataset)} training pairs do not fill one batch of "
                f"{config.batch_size} per process on {self.dist.world_size} process(es); lower batch_size"
            )
        if config.steps is not None:
            self.total_steps = config.steps
        else:
            self.total_steps = max(1, (config.epochs * self.batches_per_epoch) // config.grad_accum_steps)
        self.compiled: str | None = None  # what torch.compile covers, when it is on
        if resolve_compile(config.compile, self.device) and (
            config.compile == "on" or self.total_steps >= COMPILE_AUTO_MIN_STEPS
        ):
            self.compiled = compile_for_training(self.model)
            self.extra_meta = {**self.extra_meta, "compiled": self.compiled}
        warmup = (
            config.warmup_steps
            if config.warmup_steps is not None
            else int(config.warmup_ratio * self.total_steps)
        )
        self.optimizer = build_optimizer(
            self.model, config.learning_rate, config.weight_decay, config.adam_betas, config.adam_eps,
            substitute=self.master.by_model_param if self.master is not None else None,
        )  # fmt: skip
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.metrics_file = self.out_dir / "metrics.jsonl"
        self._writer = None
        # what one counted sample is (pre-training: a pair; fine-tuning: a positive with its negatives)
        self.sample_unit = str(getattr(task, "sample_unit", "samples"))
        self.health = ChanceMonitor(
            getattr(task, "chance_losses", {}), config.chance_warning_steps, config.chance_tolerance
        )

    # ----------------------------------------------------------------- state
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "world_size": self.dist.world_size,
        }

    def save_checkpoint(
        self,
        name: str,
        *,
        rng_state: dict[str, Any] | None = None,
        trainer_state: dict[str, Any] | None = None,
        final: bool = False,
        reason: str = "periodic",
    ) -> Path:
        """Collective: every rank contributes its RNG state; rank 0 writes the folder atomically."""
        current = ckpt.capture_rng_state()
        rng_states = all_gather_object(self.dist, rng_state or current)
        state = trainer_state or self._trainer_state()
        path = self.out_dir / name
        if self.dist.is_main:
            meta = {
                "step": state["step"],
                "epoch": state["epoch"],
                "batch_in_epoch": state["batch_in_epoch"],
                "total_steps": self.total_steps,
                "stage_index": self.stage_index,
                "stage_name": self.stage_name,
                "world_size": self.dist.world_size,
                "git_revision": ckpt.git_revision(),
                "final": final,
                "reason": reason,
                **self.extra_meta,
            }
            if self.last_metrics and self._metrics_step == state["step"]:
                meta["metrics"] = _jsonable(self.last_metrics)
            if reason == "best":
                meta["best_metric"], meta["best_value"] = self.best_metric, self.best_value
            # extra_save hooks may switch to eval mode; checkpoints hold fp32 weights (the masters)
            with preserve_modes(self.model), self._full_precision():
                ckpt.write_checkpoint(
                    self.out_dir,
                    name,
                    model=self.model,
                    trainer_state=state,
                    rng_states=rng_states,
                    meta=meta,
                    run_config_yaml=self.run_config_yaml,
                    extra_save=self.extra_save,
                )
            if not final and reason == "periodic":
                ckpt.prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        barrier(self.dist)
        # saving must not perturb the run: undo any RNG use (mode switches are undone by preserve_modes)
        ckpt.restore_rng_state(current)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, data position and this rank's RNG state."""
        from safetensors.torch import load_file

        path = Path(path)
        state = ckpt.load_trainer_state(path)
        if int(state["world_size"]) != self.dist.world_size:
            raise ValueError(
                f"{path}: saved with world size {state['world_size']}, resuming with {self.dist.world_size}; "
                "resume with the same number of processes (the data order depends on it)"
            )
        ckpt.check_safetensors(path / "model.safetensors")  # a truncated file: one error naming it
        weights = load_file(str(path / "model.safetensors"), device="cpu")
        with self._full_precision():  # into the fp32 masters, then copied to the bf16 model
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
        if unexpected or missing:
            raise ValueError(
                f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        rngs = ckpt.load_rng_states(path)
        ckpt.restore_rng_state(rngs[self.dist.rank])

    # ----------------------------------------------------------------- data
    def _micro_batches(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(epoch, batch_in_epoch, batch) from the current data position on, epoch after epoch."""
        epoch, start = self.epoch, self.batch_in_epoch
        while True:
            batches = self.sampler.rank_batches(epoch)
            world, rank = self.dist.world_size, self.dist.rank
            specs = [(epoch, b, b * world + rank, batches[b]) for b in range(start, len(batches))]
            builder = _BatchBuilder(self.dataset, self.task, specs, self.config.seed)
            loader = DataLoader(
                builder,
                batch_size=None,
                shuffle=False,
                num_workers=self.config.num_workers,
                collate_fn=_identity,
                generator=torch.Generator().manual_seed(0),  # keeps the loader off the global RNG
                persistent_workers=False,
                pin_memory=self.device.type == "cuda",
            )
            yield from loader
            epoch, start = epoch + 1, 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self._autocast_dtype)

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any]:
        """Run every evaluator now (collective): metrics, logged; the best state is saved when it improved."""
        if not self.evaluators:
            return {}
        rng = ckpt.capture_rng_state()
        metrics: dict[str, Any] = {}
        # with bf16-resident weights the evaluators see the fp32 masters (any precision they choose works)
        with eval_mode(self.model), torch.no_grad(), self._full_precision():
            for evaluator in self.evaluators:
                if self.dist.is_main or getattr(evaluator, "all_ranks", False):
                    metrics.update(evaluator(self.model, self.step))
        ckpt.restore_rng_state(rng)  # evaluation must not perturb the run (dropout draws, batch seeds)
        metrics = broadcast_object(self.dist, metrics)
        self.last_metrics, self._metrics_step = metrics, self.step
        self._log({"stage": self.stage_name, "step": self.step, "event": "evaluation", **_jsonable(metrics)})
        return metrics

    def _improved(self, metrics: dict[str, Any]) -> bool:
        if self.best_metric is None:
            return False
        if self.best_metric not in metrics:
            raise KeyError(
                f"best_metric {self.best_metric!r} is not among the evaluation metrics {sorted(metrics)}"
            )
        value = float(metrics[self.best_metric])
        if not math.isfinite(value):
            return False
        better = (
            self.best_value is None
            or (self.best_mode == "max" and value > self.best_value)
            or (self.best_mode == "min" and value < self.best_value)
        )
        if better:
            self.best_value = value
        return better

    def _load_best_value(self) -> None:
        """A resumed run keeps a new best only if it beats the one already in `out_dir/best`."""
        meta = self.out_dir / "best" / ckpt.META
        if self.best_metric is None or not meta.is_file():
            return
        stored = json.loads(meta.read_text(encoding="utf-8"))
        if stored.get("best_metric") == self.best_metric and stored.get("best_value") is not None:
            self.best_value = float(stored["best_value"])

    def _evaluation_due(self) -> bool:
        every = self.config.evaluate_every
        if every > 0:
            return self.step % every == 0
        return bool(self.config.checkpoint_every) and self.step % self.config.checkpoint_every == 0

    # ----------------------------------------------------------------- logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.config.tensorboard and self._writer is None and not getattr(self, "_no_tensorboard", False):
            try:  # tensorboard is optional: metrics.jsonl always has the same numbers
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                log.info(
                    "tensorboard is not installed: logging to metrics.jsonl only (pip install tensorboard)"
                )
                self._no_tensorboard = True
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{self.stage_name}/{key}", value, record["step"])

    # ----------------------------------------------------------------- loop
    def train(self, resume_from: str | Path | None = None) -> Path:
        """Run to `total_steps`; returns the final checkpoint folder (`out_dir/final`)."""
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # temporaries of a killed run's checkpoint writes (GBs at real size)
            ckpt.remove_stale_temporaries(self.out_dir)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self._load_best_value()
        cfg = self.config
        self.wrapped.train()
        batches = self._micro_batches()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.stage_name,
            disable=not (cfg.progress_bar and self.dist.is_main),
            dynamic_ncols=True,
        )
        t_last, samples_since, steps_since = time.perf_counter(), 0, 0
        sums: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                # The last good state: what a NaN in this step falls back to.
                good_rng = ckpt.capture_rng_state()
                good_position = (self.epoch, self.batch_in_epoch)
                step_parts: dict[str, float] = {}
                step_loss = 0.0
                step_samples = 0
                if hasattr(self.task, "current_step"):  # tasks whose behaviour follows a schedule
                    self.task.current_step = self.step
                for k in range(cfg.grad_accum_steps):
                    epoch, b, batch = next(batches)
                    batch = _to_device(batch, self.device)
                    sync = k == cfg.grad_accum_steps - 1 or not self.dist.distributed
                    ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
                    with ctx:
                        with self._autocast():
                            loss, parts = self.wrapped(batch)
                        loss_value, values = _host_values(loss, parts)  # one device->host copy
                        self._check_finite(loss_value, values, good_rng, good_position)
                        scaled = loss.float() / cfg.grad_accum_steps
                        if self.scaler is not None:
                            self.scaler.scale(scaled).backward()
                        else:
                            scaled.backward()
                    step_loss += loss_value / cfg.grad_accum_steps
                    for n, v in values.items():
                        step_parts[n] = step_parts.get(n, 0.0) + v / cfg.grad_accum_steps
                    step_samples += _batch_size(batch)
                    self.epoch, self.batch_in_epoch = epoch, b + 1
                    if self.batch_in_epoch >= self.batches_per_epoch:
                        self.epoch, self.batch_in_epoch = epoch + 1, 0

                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                grad_norm = self._optimizer_step(good_rng, good_position)
                self.step += 1
                # Average the logged numbers over ranks (one small all-reduce per step).
                names = sorted(step_parts)
                vec = torch.tensor(
                    [step_loss, *[step_parts[n] for n in names], float(step_samples)], dtype=torch.float64
                )
                vec = all_reduce_sum(self.dist, vec)
                world = self.dist.world_size
                step_loss = float(vec[0]) / world
                step_parts = {n: float(vec[i + 1]) / world for i, n in enumerate(names)}
                samples_since += int(vec[-1])
                steps_since += 1
                for n, v in [("loss", step_loss), *step_parts.items()]:
                    sums[n] = sums.get(n, 0.0) + v
                for warning in self.health.update(self.step, step_parts):
                    if self.dist.is_main:
                        if bar.disable:
                            log.warning(warning.message())
                        else:
                            bar.write(warning.message())
                        self.health.write(self.out_dir / "health.json")

                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = max(time.perf_counter() - t_last, 1e-9)
                    record = {
                        "stage": self.stage_name,
                        "step": self.step,
                        "epoch": self.epoch,
                        "lr": lr,
                        "loss": step_loss,
                        **{_metric_name(n): v for n, v in step_parts.items()},
                        "loss_avg": sums["loss"] / steps_since,
                        # the same parts averaged over the steps since the last record (one step is noisy)
                        **{f"{_metric_name(n)}_avg": sums[n] / steps_since for n in step_parts},
                        "grad_norm": grad_norm,
                        "samples_per_s": samples_since / elapsed,
                        "sample_unit": self.sample_unit,
                        "world_size": world,
                    }
                    self._log(record)
                    bar.set_postfix(
                        {"loss": f"{sums['loss'] / steps_since:.3f}"}
                        | {n: f"{sums[n] / steps_since:.3f}" for n in step_parts}
                        | {f"{self.sample_unit}/s": f"{samples_since / elapsed:.1f}"},
                        refresh=False,
                    )
                    t_last, samples_since, steps_since, sums = time.perf_counter(), 0, 0, {}
                bar.update(1)

                if self.step < self.total_steps:
                    improved = False
                    if self.evaluators and self._evaluation_due():
                        improved = self._improved(self.evaluate())
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint(ckpt.checkpoint_name(self.step))
                    if improved:
                        self.save_checkpoint("best", reason="best")
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        if self.dist.is_main and self.health.chance:
            self.health.write(self.out_dir / "health.json")
        improved = bool(self.evaluators) and self._improved(self.evaluate())
        checksums = self._replica_checksums()
        self.extra_meta = {**self.extra_meta, "replica_checksums": checksums}
        final = self.save_checkpoint("final", final=True, reason="final")
        if improved:
            self.save_checkpoint("best", reason="best")
        if len(set(checksums)) > 1:
            raise RuntimeError(f"replicas diverged: parameter checksums per rank {checksums}")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.dist.distributed:
            self._let_gloo_settle()
        return final

    def _full_precision(self) -> contextlib.AbstractContextManager:
        return self.master.full_precision() if self.master is not None else contextlib.nullcontext()

    def _optimizer_step(self, good_rng: dict[str, Any], good_position: tuple[int, int]) -> float:
        cfg = self.config
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.master is not None:
            self.master.grads_to_masters()
            params = [m for _, m in self.master.pairs if m.grad is not None]
        else:
            params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            norm = (
                torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params]))
                if params
                else torch.zeros(())
            )
        norm_value = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself on inf/NaN gradients (fp16 overflow)
            self.scaler.update()
        else:
            if not math.isfinite(norm_value):
                self._stop_non_finite(["gradient"], {"grad_norm": norm_value}, good_rng, good_position)
            self.optimizer.step()
        if self.master is not None:
            self.master.masters_to_model()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm_value

    def _check_finite(
        self,
        loss: float,
        parts: dict[str, float],
        good_rng: dict[str, Any],
        good_position: tuple[int, int],
    ) -> None:
        bad_local = not math.isfinite(loss)
        flag = all_reduce_sum(self.dist, torch.tensor([1.0 if bad_local else 0.0]))
        if float(flag[0]) == 0:
            return
        culprits = [n for n, v in parts.items() if not math.isfinite(v)] or (
            ["total"] if bad_local else ["other rank"]
        )
        self._stop_non_finite(culprits, parts, good_rng, good_position)

    def _stop_non_finite(
        self,
        culprits: list[str],
        parts: dict[str, float],
        good_rng: dict[str, Any],
        good_position: tuple[int, int],
    ) -> None:
        """Save the state before this step (weights and optimizer have not moved yet) and raise."""
        state = self._trainer_state()
        state["epoch"], state["batch_in_epoch"] = good_position
        self.optimizer.zero_grad(set_to_none=True)
        name = ckpt.checkpoint_name(self.step)
        path = self.save_checkpoint(
            name, rng_state=good_rng, trainer_state=state, reason="last good state before non-finite loss"
        )
        step = self.step + 1
        detail = ", ".join(f"{n}={v}" for n, v in parts.items())
        message = (
            f"non-finite loss at step {step} (stage '{self.stage_name}', epoch {self.epoch}) in task(s) "
            f"{', '.join(culprits)} [{detail}]; stopped. The last good state (after step {self.step}) is saved in "
            f"{path}; fix the data or lower the learning rate and resume with --resume {path}"
        )
        self._log(
            {
                "stage": self.stage_name,
                "step": step,
                "event": "non_finite",
                "tasks": culprits,
                "checkpoint": str(path),
            }
        )
        raise NonFiniteLossError(message, step, culprits, path)

    def _let_gloo_settle(self) -> None:
        """Belt and braces beside the collectives that keep their tensors (`imagebert.runtime.distributed`): the
        process group is freed with the DDP wrapper, and a gloo thread still releasing a collective's tensors then
        needs the GIL that the freeing thread holds. A barrier, then a short sleep without the GIL, lets it finish."""
        barrier(self.dist)
        time.sleep(0.2)

    def _replica_checksums(self) -> list[float]:
        """DDP keeps replicas identical; check it once at the end (one checksum per rank, stored in meta.json)."""
        with torch.no_grad():
            total = sum(float(p.detach().double().sum()) for p in self.model.parameters())
        return all_gather_object(self.dist, total)


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluation metrics as JSON values (numpy/torch scalars become floats; anything else its string)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | float | str) or value is None:
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = str(value)
    return out


def _host_values(loss: torch.Tensor, parts: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The loss and its logged parts as Python floats through one stacked copy: on CUDA each `float(t)` is a
    host sync, so reading them one by one stalled the step once per part."""
    names = [n for n, p in parts.items() if p is not None]
    tensors = [loss.detach().float().reshape(())]
    tensors += [torch.as_tensor(parts[n]).detach().float().reshape(()).to(tensors[0].device) for n in names]
    flat = torch.stack(tensors).tolist()
    return flat[0], dict(zip(names, flat[1:], strict=True))


def _metric_name(part: str) -> str:
    """Loss parts are logged as `loss_<name>`; accuracies (`<name>_acc`) under their own name."""
    return part if part.endswith("_acc") else f"loss_{part}"


def _batch_size(batch: dict[str, Any]) -> int:
    for key in ("input_ids", "region_features", "itm_labels"):
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return 0
