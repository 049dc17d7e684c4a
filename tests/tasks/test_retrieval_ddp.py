"""Retrieval fine-tuning with the contrastive (ITC) loss on 2 gloo processes: the whole loss runs inside the
DDP-wrapped forward, so every gradient (the contrastive projections and scale included) is synchronised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagebert.tasks.retrieval import load_finetune_config

from .conftest import write_karpathy_dataset

CONFIG = Path(__file__).resolve().parents[2] / "src" / "imagebert" / "configs" / "finetune" / "demo_cpu.yaml"


@pytest.mark.slow
def test_itc_finetuning_on_two_gloo_processes(tmp_path, tiny_checkpoint):
    data = write_karpathy_dataset(tmp_path / "data", {"train": 16, "val": 6})
    out = tmp_path / "ft"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "imagebert", "finetune", str(CONFIG), "--out", str(out),
        "--set", f"dataset={data}", "--set", f"init_checkpoint={tiny_checkpoint}",
        "--set", "training.steps=4", "--set", "training.checkpoint_every=2", "--set", "training.log_every=1",
        "--set", "training.batch_size=4", "--set", "training.learning_rate=1e-3",
        "--set", "negatives.pool_size=6",
        "--set", "loss.itc=0.5", "--set", "validation.num_images=4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert meta["length_bucketing"] is False  # fine-tuning gives the sampler no lengths: said, not pretended
    sums = meta["replica_checksums"]
    # a loss outside the DDP forward leaves its gradients unsynchronised: the replicas would differ here
    assert len(sums) == 2 and sums[0] == sums[1]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all("loss_itc" in r and r["loss_itc"] > 0 for r in train)
    # validation is an evaluation callback on rank 0: logged once per evaluation, at the checkpoint and the end
    evals = [r for r in records if r.get("event") == "evaluation"]
    assert [r["step"] for r in evals] == [2, 4] and all("val_rsum" in r for r in evals)
    vals = [json.loads(x) for x in (out / "validation.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [2, 4]
    best = json.loads((out / "best" / "meta.json").read_text())
    assert best["best_metric"] == "val_rsum" and best["best_value"] == max(v["val_rsum"] for v in vals)

    # the contrastive projections and scale were trained (their gradients reached the optimizer on both ranks)
    before = load_file(str(tiny_checkpoint / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    itc_keys = [k for k in after if "itc" in k and k in before]
    assert itc_keys
    assert any(not torch.equal(before[k], after[k]) for k in itc_keys)


def test_the_whole_loss_is_one_forward_of_the_wrapped_module(tmp_path, tiny_checkpoint):
    """What DDP wraps (`trainer.wrapped`) computes the full loss, contrastive part included: one backward through
    it reaches the contrastive projections and scale, which the old outside-the-forward ITC call bypassed."""
    from imagebert.data.collate import PairCollator
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.modeling import ImageBertForRetrieval, load_tokenizer
    from imagebert.tasks.retrieval import RetrievalTask, _Indices
    from imagebert.training.trainer import TaskLoss, Trainer, TrainerConfig

    data = write_karpathy_dataset(tmp_path / "data", {"train": 10})
    ds = PairDataset(load_dataset_spec(data), split="train")
    cfg = load_finetune_config(CONFIG, ["loss.itc=0.5", "negatives.pool_size=6"])
    model = ImageBertForRetrieval.from_pretrained(tiny_checkpoint)
    mc = model.config
    collator = PairCollator(
        load_tokenizer(tiny_checkpoint),
        max_text_tokens=mc.max_text_tokens,
        max_regions=mc.max_regions,
        feature_dim=mc.visual_feature_dim,
        truncate_regions=True,
    )
    task = RetrievalTask(ds, collator, cfg.negatives, cfg.loss)
    tcfg = TrainerConfig(batch_size=4, steps=1, progress_bar=False, tensorboard=False, device="cpu")
    trainer = Trainer(model, task, _Indices(len(ds)), tcfg, tmp_path / "out")
    assert isinstance(trainer.wrapped, TaskLoss) and trainer.wrapped.model is model
    # captions of four different images (5 per image): copies of one image would leave ITC nothing to contrast
    batch = task.build_batch([0, 5, 10, 15], torch.Generator().manual_seed(0))
    loss, parts = trainer.wrapped(batch)
    assert {"bce", "itc"} <= set(parts)
    direct, _ = task.compute_loss(model, batch)
    assert torch.allclose(loss, direct)
    loss.backward()
    itc_params = [p for n, p in model.named_parameters() if "itc" in n]
    assert itc_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in itc_params)
