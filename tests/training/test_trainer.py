"""The training loop: learning, exact stop-and-resume, NaN stops, sharding, schedule, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagebert.tasks.pretraining import PretrainConfig, StageConfig, run_pretraining
from imagebert.training.pairs import InMemoryPairDataset
from imagebert.training.trainer import NonFiniteLossError, TrainerConfig

from .conftest import make_corpus, tiny_model_overrides


def _metrics(run: Path, stage: str = "1-s1") -> list[dict]:
    lines = (run / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if "loss" in json.loads(x)]


def _config(bert: Path, **training) -> PretrainConfig:
    t = dict(
        batch_size=4,
        learning_rate=1e-3,
        log_every=1,
        checkpoint_every=0,
        progress_bar=False,
        tensorboard=False,
    )
    t.update(training)
    steps = t.pop("steps", 6)
    return PretrainConfig(
        stages=[StageConfig(name="s1", steps=steps)],
        init_from_bert=str(bert),
        model=tiny_model_overrides(),
        training=TrainerConfig(**t),
    )


class _Interrupt(Exception):
    pass


class _StopAfter(InMemoryPairDataset):
    """Raises after `limit` item reads: a run killed mid-stage."""

    def __init__(self, captions, records, limit: int) -> None:
        super().__init__(captions, records)
        self.limit, self.reads = limit, 0

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > self.limit:
            raise _Interrupt
        return super().__getitem__(index)


def _fixed_eval_loss(model, task, pool, seeds=range(6)) -> dict[str, float]:
    """Per-task loss on fixed batches (fixed masks and negatives), dropout off: a noise-free yardstick."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for seed in seeds:
            items = [pool[i] for i in range(len(pool))]
            _, parts = task.compute_loss(model, task.build_batch(items, torch.Generator().manual_seed(seed)))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(seeds)
    return sums


def test_loss_falls_on_a_tiny_corpus(tiny_bert, tmp_path):
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.tasks.pretraining import ItmConfig, MaskingConfig
    from imagebert.training import PairPool, PretrainTask

    caps, recs = make_corpus(num_images=4, captions_per_image=2)
    ds = InMemoryPairDataset(caps, recs)
    cfg = _config(tiny_bert, steps=25, learning_rate=5e-3, warmup_ratio=0.05)
    final = run_pretraining(cfg, tmp_path / "run", dataset_factory=lambda s: [ds])
    assert len(_metrics(tmp_path / "run")) == 25

    pool = PairPool([ds])
    torch.manual_seed(0)
    before = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides())
    after = ImageBertForPreTraining.from_pretrained(final)
    task = PretrainTask(pool, load_tokenizer(tiny_bert), after.config, MaskingConfig(), ItmConfig())
    l0, l1 = _fixed_eval_loss(before, task, pool), _fixed_eval_loss(after, task, pool)
    assert sum(l1.values()) < 0.9 * sum(l0.values()), (l0, l1)
    # (ITM weighs 4 in the default sum, so the masked tasks fall a little slower than at the paper's weight 1)
    assert l1["mlm"] < 0.9 * l0["mlm"] and l1["mrfr"] < 0.9 * l0["mrfr"] and l1["moc"] < l0["moc"], (l0, l1)
    meta = json.loads((final / "meta.json").read_text())
    assert meta["final"] and meta["step"] == 25 and "git_revision" in meta
    from imagebert.modeling import ImageBertForRetrieval

    ImageBertForRetrieval.from_pretrained(final)  # the retrieval fine-tuner can start from it


def test_stop_and_resume_reproduces_the_uninterrupted_run(tiny_bert, tmp_path):
    caps, recs = make_corpus(num_images=10, captions_per_image=2)  # 20 pairs: 5 batches of 4 per epoch
    cfg = _config(
        tiny_bert, steps=8, grad_accum_steps=2, checkpoint_every=3
    )  # crosses epochs, resumes mid-epoch
    ds = InMemoryPairDataset(caps, recs)
    run_pretraining(cfg, tmp_path / "full", dataset_factory=lambda s: [ds])
    full = [m["loss"] for m in _metrics(tmp_path / "full")]

    # the same run, killed during step 5 (after the checkpoint at step 3)
    killed = _StopAfter(caps, recs, limit=4 * 2 * 4 + 3)
    with pytest.raises(_Interrupt):
        run_pretraining(cfg, tmp_path / "part", dataset_factory=lambda s: [killed])
    ckpts = sorted(p.name for p in (tmp_path / "part" / "1-s1").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-00000003"]
    run_pretraining(cfg, tmp_path / "part", resume=tmp_path / "part", dataset_factory=lambda s: [ds])
    resumed = _metrics(tmp_path / "part")
    by_step = {
        m["step"]: m["loss"] for m in resumed
    }  # steps 1-4 from the first try, 4-8 from the resumed one
    assert [m["step"] for m in resumed][-5:] == [4, 5, 6, 7, 8]
    assert [by_step[s] for s in range(1, 9)] == full  # bitwise equal, step for step
    a = torch.load(tmp_path / "full/1-s1/final/trainer_state.pt", weights_only=True)
    b = torch.load(tmp_path / "part/1-s1/final/trainer_state.pt", weights_only=True)
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"]) == (3, 1)


def test_nan_loss_stops_with_the_last_good_state(tiny_bert, tmp_path):
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.tasks.pretraining import ItmConfig, MaskingConfig
    from imagebert.training import PairPool, PretrainTask, Trainer

    caps, recs = make_corpus()
    pool = PairPool([InMemoryPairDataset(caps, recs)])
    tcfg = TrainerConfig(
        batch_size=4, steps=6, log_every=1, checkpoint_every=0, progress_bar=False, tensorboard=False
    )

    class PoisonedTask(PretrainTask):
        poison_batch: int | None = None
        built = 0

        def build_batch(self, items, generator):
            batch = super().build_batch(items, generator)
            if self.built == self.poison_batch:
                batch["mrfr_targets"][0, 0, 0] = float("nan")
                batch["itm_labels"][0] = 1  # the poisoned pair is a matched one, so MRFR sees it
            self.built += 1
            return batch

    def trainer(out: Path, poison: int | None) -> Trainer:
        torch.manual_seed(0)
        model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides())
        task = PoisonedTask(pool, load_tokenizer(tiny_bert), model.config, MaskingConfig(), ItmConfig())
        task.poison_batch = poison
        return Trainer(model, task, pool, tcfg, out)

    clean = trainer(tmp_path / "clean", None)
    clean.train()
    clean_losses = [m["loss"] for m in _metrics(tmp_path, "clean")]

    bad = trainer(tmp_path / "bad", poison=3)
    with pytest.raises(NonFiniteLossError) as info:
        bad.train()
    err = info.value
    assert err.step == 4 and err.tasks == ["mrfr"]
    assert "step 4" in str(err) and "mrfr" in str(err) and str(err.checkpoint) in str(err)
    meta = json.loads((err.checkpoint / "meta.json").read_text())
    assert meta["step"] == 3 and meta["batch_in_epoch"] == 3
    assert not (tmp_path / "bad" / "final").exists()
    # the saved state is the one before the bad step: resuming without the poison gives the clean run's steps 4-6
    again = trainer(tmp_path / "again", None)
    again.train(resume_from=err.checkpoint)
    resumed = [m["loss"] for m in _metrics(tmp_path, "again")]
    assert resumed == clean_losses[3:]


def test_bf16_autocast_bucketing_and_workers(tiny_bert, tmp_path):
    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    losses = {}
    for workers in (0, 2):
        cfg = _config(tiny_bert, steps=3, precision="bf16", bucket_by_length=True, bucket_multiplier=2,
                      num_workers=workers)  # fmt: skip
        final = run_pretraining(cfg, tmp_path / f"w{workers}", dataset_factory=lambda s: [ds])
        assert json.loads((final / "meta.json").read_text())["length_bucketing"] is True
        losses[workers] = [m["loss"] for m in _metrics(tmp_path / f"w{workers}")]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[0])
    assert losses[0] == losses[2]  # batches built in worker processes are the same batches


def test_multi_stage_starts_each_stage_from_the_previous_one(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    caps, recs = make_corpus()
    ds = InMemoryPairDataset(caps, recs)
    cfg = _config(tiny_bert, steps=2, tensorboard=True)
    cfg.stages = [
        StageConfig(name="a", steps=2),
        StageConfig(name="b", steps=1, learning_rate=1e-9, warmup_steps=0),
    ]
    final = run_pretraining(cfg, tmp_path / "run", dataset_factory=lambda s: [ds])
    assert final == tmp_path / "run" / "2-b" / "final"
    a = load_file(tmp_path / "run" / "1-a" / "final" / "model.safetensors")
    b = load_file(final / "model.safetensors")
    # stage b ran one step at lr 1e-9: its weights are stage a's, barely moved (not BERT's, not re-initialised)
    key = next(k for k in a if "region_heads" in k)
    assert torch.allclose(a[key], b[key], atol=1e-6)
    assert json.loads((final / "meta.json").read_text())["stage_index"] == 1
    assert list((tmp_path / "run" / "2-b" / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars


def test_checkpoint_hooks_do_not_perturb_the_run(tiny_bert, tmp_path):
    """A save hook (the retrieval fine-tuner validates there) may use RNGs and eval mode: losses must not change."""
    import random

    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.tasks.pretraining import ItmConfig, MaskingConfig
    from imagebert.training import PairPool, PretrainTask, Trainer

    caps, recs = make_corpus()
    pool = PairPool([InMemoryPairDataset(caps, recs)])

    def run(out: Path, every: int, hook) -> list[float]:
        torch.manual_seed(0)
        model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides())
        task = PretrainTask(pool, load_tokenizer(tiny_bert), model.config, MaskingConfig(), ItmConfig())
        tcfg = TrainerConfig(batch_size=4, steps=4, log_every=1, checkpoint_every=every, progress_bar=False,
                             tensorboard=False)  # fmt: skip
        trainer = Trainer(model, task, pool, tcfg, out, extra_save=hook and (lambda d: hook(model, d)))
        trainer.train()
        return [m["loss"] for m in _metrics(out.parent, out.name)]

    def noisy_hook(model, folder):
        model.eval()
        torch.rand(1000)
        random.random()

    assert run(tmp_path / "plain", 0, None) == run(tmp_path / "hooked", 1, noisy_hook)


class _ScriptedEvaluator:
    """Returns a scripted score per step and tries to perturb the run (RNG draws, mode switch) as real ones may."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, model, step: int) -> dict[str, float]:
        import random

        self.calls.append((step, model.training))
        model.train()  # the Trainer must undo this
        torch.rand(1000)
        random.random()
        return {"score": self.scores.get(step, 0.0), "label": f"step {step}"}


def test_evaluation_callbacks_log_keep_the_best_and_leave_the_run_unchanged(tiny_bert, tmp_path):
    from imagebert.config_utils import ConfigError
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.tasks.pretraining import ItmConfig, MaskingConfig
    from imagebert.training import PairPool, PretrainTask, Trainer

    caps, recs = make_corpus()
    pool = PairPool([InMemoryPairDataset(caps, recs)])

    def trainer(out: Path, evaluators=(), steps: int = 6, **kw) -> Trainer:
        torch.manual_seed(0)
        model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides())
        task = PretrainTask(pool, load_tokenizer(tiny_bert), model.config, MaskingConfig(), ItmConfig())
        tcfg = TrainerConfig(batch_size=4, steps=steps, log_every=1, checkpoint_every=0, evaluate_every=2,
                             progress_bar=False, tensorboard=False)  # fmt: skip
        return Trainer(model, task, pool, tcfg, out, evaluators=evaluators, **kw)

    plain = tmp_path / "plain"
    trainer(plain).train()
    ev = _ScriptedEvaluator({2: 1.0, 4: 3.0, 6: 2.0})
    out = tmp_path / "evaluated"
    t = trainer(out, [ev], best_metric="score")
    t.train()
    assert ev.calls == [(2, False), (4, False), (6, False)]  # every 2 steps and at the end, in eval mode
    assert t.model.training  # back in training mode after the evaluator switched it
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "evaluation"]
    assert [(r["step"], r["score"]) for r in evals] == [(2, 1.0), (4, 3.0), (6, 2.0)]
    # evaluation draws random numbers and switches modes: the losses are still those of the plain run
    assert [m["loss"] for m in _metrics(out.parent, out.name)] == [
        m["loss"] for m in _metrics(plain.parent, plain.name)
    ]
    best = json.loads((out / "best" / "meta.json").read_text())
    assert (best["step"], best["best_metric"], best["best_value"]) == (4, "score", 3.0)
    assert best["metrics"]["label"] == "step 4"
    assert json.loads((out / "final" / "meta.json").read_text())["metrics"]["score"] == 2.0

    # a second run into the same folder must beat the stored best (3.0) to replace it
    trainer(out, [_ScriptedEvaluator({2: 2.5})], steps=2, best_metric="score").train()
    assert json.loads((out / "best" / "meta.json").read_text())["best_value"] == 3.0
    trainer(out, [_ScriptedEvaluator({2: 4.0})], steps=2, best_metric="score").train()
    best = json.loads((out / "best" / "meta.json").read_text())
    assert (best["step"], best["best_value"]) == (2, 4.0)

    with pytest.raises(ValueError, match="best_metric needs at least one evaluator"):
        trainer(tmp_path / "x", best_metric="score")
    with pytest.raises(KeyError, match="missing"):
        trainer(tmp_path / "y", [_ScriptedEvaluator({})], steps=2, best_metric="missing").train()
    with pytest.raises(ConfigError, match="evaluate_every"):
        TrainerConfig(steps=1, evaluate_every=-1).validate()


def test_bf16_precision_comes_from_the_runtime_layer(tiny_bert, tmp_path):
    """The Trainer's autocast dtype is runtime.precision's answer for the configured name."""
    from imagebert.modeling import ImageBertForPreTraining, load_tokenizer
    from imagebert.runtime.precision import resolve_precision
    from imagebert.tasks.pretraining import ItmConfig, MaskingConfig
    from imagebert.training import PairPool, PretrainTask, Trainer

    caps, recs = make_corpus()
    pool = PairPool([InMemoryPairDataset(caps, recs)])
    model = ImageBertForPreTraining.init_from_bert(tiny_bert, **tiny_model_overrides())
    task = PretrainTask(pool, load_tokenizer(tiny_bert), model.config, MaskingConfig(), ItmConfig())
    for name in ("fp32", "bf16"):
        tcfg = TrainerConfig(batch_size=4, steps=1, precision=name, progress_bar=False, tensorboard=False)
        t = Trainer(model, task, pool, tcfg, tmp_path / name)
        assert t._autocast_dtype == resolve_precision(name, "cpu")
        with t._autocast():
            y = torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        assert y.dtype == (torch.bfloat16 if name == "bf16" else torch.float32)


def test_host_values_reads_loss_and_parts_in_one_copy():
    """The logged numbers are the tensors' values (NaN kept, so the finite check still sees it)."""
    import math

    from imagebert.training.trainer import _host_values

    loss = torch.tensor(1.5, requires_grad=True) * 2
    parts = {
        "mlm": torch.tensor(0.25),
        "itm_acc": torch.tensor([0.75]),
        "mrfr": torch.tensor(float("nan")),
        "x": None,
    }
    value, values = _host_values(loss, parts)
    assert value == 3.0 and values["mlm"] == 0.25 and values["itm_acc"] == 0.75
    assert math.isnan(values["mrfr"]) and "x" not in values
