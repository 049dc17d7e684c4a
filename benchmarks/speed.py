"""Speed against VisualBERT on the same work and against the matmul rate of the step's own shapes (issue 14).

Every figure comes from interleaved repetitions (A, B, C, A, B, C, ...) with ONE intra-op thread, timed in
process CPU time with wall time beside it, repeated until every setting's spread is under 5% (or a cap), the
spread printed (benchmarks/timing.py):
- training step: ours (MLM + ITM) vs transformers' VisualBertForPreTraining of the same size on one prepared
  batch, with the MLM head on the same positions both ways: the masked text tokens of matched pairs
  ("masked"), or every position of the joint sequence ("allpos"); fp32 and bf16 autocast;
- utilisation against the measured forward AND backward matmul rates of one encoder layer's own products;
- retrieval pairs/s through `ModelPairScorer` (what `imagebert evaluate` runs) at batch 128: fp32, bf16
  autocast, bf16-resident weights; and length-sorted vs unsorted batches on variable region counts;
- feature-store read samples/s against the training step's consumption.

    .venv/bin/python -m benchmarks.speed --out benchmarks/results/speed.md --json benchmarks/out/speed.json
    .venv/bin/python -m benchmarks.speed --quick            # tiny sizes: checks the code, not the speed
    .venv/bin/python -m benchmarks.speed --profile bf16     # top ops of our step (torch.profiler)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.timing import fmt_spread, paired_ratio, run_interleaved, timed, write_outputs
from imagebert.data.types import RegionRecord

WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "riding",
    "walking",
    "red",
    "blue",
    "small",
    "large",
    "street",
    "park",
    "beach",
    "with",
    "on",
    "in",
    "the",
    "of",
    "near",
    "two",
    "young",
    "old",
    "girl",
    "boy",
    "standing",
    "sitting",
    "green",
    "white",
    "black",
]


@dataclass
class Sizes:
    """Model and batch sizes of one benchmark run."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    feature_dim: int = 2048
    regions: int = 100
    words: int = 20
    num_classes: int = 1600
    batch: int = 8


def tiny_sizes(batch: int = 4) -> Sizes:
    """Sizes small enough for CI (seconds)."""
    return Sizes(layers=2, hidden=64, heads=4, intermediate=128, feature_dim=32, regions=6, words=8,
                 num_classes=20, batch=batch)  # fmt: skip


def override_sizes(sizes: Sizes, items: list[str]) -> Sizes:
    """Apply `FIELD=N` overrides to `sizes`; an unknown field or a value that is not a positive integer is an
    error naming it (a typo must not silently benchmark the default size)."""
    known = {f.name for f in fields(sizes)}
    changes: dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known:
            raise SystemExit(f"--size {item}: unknown field {name!r} (one of {', '.join(sorted(known))})")
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--size {item}: {name} takes a positive integer, got {value!r}")
        changes[name] = int(value)
    return replace(sizes, **changes)


# --------------------------------------------------------------------------------------------- FLOP counting
def train_step_flops(
    *,
    sizes: Sizes,
    seq_len: int,
    batch: int,
    regions: int,
    mlm_positions: int,
    moc_positions: int = 0,
    mrfr_positions: int = 0,
    mlm_head_positions: int | None = None,
    region_proj_inputs: int | None = None,
) -> dict[str, int]:
    """Analytic matmul FLOPs of one training step (forward + backward), by part.

    A matmul of an (n x k) input with a (k x m) weight costs 2nkm forward and 4nkm backward (input grad and weight
    grad): 6 * params * rows. Counted:
    - encoder: 6 * layers * (4H^2 + 2HI) * B * L, over the executed (padded) sequence length L;
    - attention scores and context: 12 * layers * B * L^2 * H (2 * 2 L^2 H forward, twice that backward);
    - region projections: 4 * (D + 5) * H * B * R (region features need no input gradient: 2 + 2, not 6);
    - pooler + ITM: 6 * (H^2 + H) * B;
    - MLM head: 6 * (H^2 + H * V) * positions it runs on (ours: masked tokens; VisualBERT: every position);
    - MOC 6 * H * C and MRFR 6 * H * D per masked region.
    Not counted: embeddings lookups, LayerNorm, GELU, softmax, dropout, losses, the optimizer (all O(params) or
    O(B*L*H), and none of them a matmul).
    """
    s = sizes
    h, i = s.hidden, s.intermediate
    rp = batch * regions if region_proj_inputs is None else region_proj_inputs
    mlm_rows = mlm_positions if mlm_head_positions is None else mlm_head_positions
    parts = {
        "encoder": 6 * s.layers * (4 * h * h + 2 * h * i) * batch * seq_len,
        "attention": 12 * s.layers * batch * seq_len * seq_len * h,
        "region_proj": 4 * (s.feature_dim + 5) * h * rp,
        "pooler_itm": 6 * (h * h + h) * batch,
        "mlm_head": 6 * (h * h + h * s.vocab) * mlm_rows,
        "moc_head": 6 * h * s.num_classes * moc_positions,
        "mrfr_head": 6 * h * s.feature_dim * mrfr_positions,
    }
    parts["total"] = sum(parts.values())
    return parts


def matmul_flops_per_s(dtype: torch.dtype, n: int = 2048, reps: int = 5, m: int | None = None,
                       k: int | None = None) -> float:  # fmt: skip
    """The machine's dense matmul rate in `dtype`: median of `reps` (m x k) @ (k x n) products (square by default)."""
    m = n if m is None else m
    k = n if k is None else k
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


# --------------------------------------------------------------------------------------------- data
def make_pairs(n: int, sizes: Sizes, seed: int = 0) -> list[tuple[RegionRecord, str]]:
    """n (RegionRecord, caption) pairs: `regions` boxes of `feature_dim` fp16 features, `words`-word captions."""
    rng = np.random.default_rng(seed)
    r = sizes.regions
    pairs = []
    for k in range(n):
        x1, y1 = rng.uniform(0, 300, r), rng.uniform(0, 300, r)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, 300, r), y1 + rng.uniform(10, 300, r)], 1)
        rec = RegionRecord(f"im{k}", rng.random((r, sizes.feature_dim), dtype=np.float32).astype(np.float16),
                           boxes.astype(np.float32), 640, 640, rng.integers(0, sizes.num_classes, r))  # fmt: skip
        pairs.append((rec, " ".join(rng.choice(WORDS, sizes.words))))
    return pairs


class BatchBuilder:
    """The real data path of a pre-training step: PairCollator, then TextMasker and mask_regions.

    Every other item gets another item's caption (ITM negative, itm_labels 0), as the trainer's 50% negatives do.
    """

    def __init__(self, sizes: Sizes) -> None:
        from imagebert.data.collate import PairCollator
        from imagebert.data.masking import MaskingConfig, TextMasker
        from imagebert.modeling import load_tokenizer

        self.tokenizer = load_tokenizer()
        self.collator = PairCollator(self.tokenizer, max_text_tokens=43, max_regions=max(sizes.regions, 1),
                                     feature_dim=sizes.feature_dim)  # fmt: skip
        self.masking = MaskingConfig()
        self.text_masker = TextMasker.from_tokenizer(self.tokenizer, self.masking)

    def __call__(self, pairs: list[tuple[RegionRecord, str]], seed: int = 0) -> tuple[dict[str, Any], float]:
        """(model inputs incl. labels, seconds spent collating + masking)."""
        from imagebert.data.masking import mask_regions

        t = time.perf_counter()
        n = len(pairs)
        itm = torch.tensor([1 - (k % 2) for k in range(n)])
        texts = [pairs[k][1] if itm[k] else pairs[(k + 1) % n][1] for k in range(n)]
        batch = self.collator([(p[0], t_) for p, t_ in zip(pairs, texts)])
        g = torch.Generator().manual_seed(seed)
        ids, mlm_labels = self.text_masker(batch["input_ids"], batch["attention_mask"], g)
        rm = mask_regions(batch["region_features"], batch["region_mask"], batch["region_class_ids"],
                          self.masking, g)  # fmt: skip
        inputs = {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"],
            "region_features": rm.region_features,
            "region_locations": batch["region_locations"],
            "region_mask": batch["region_mask"],
            "mlm_labels": mlm_labels,
            "region_masked": rm.region_masked,
            "moc_labels": rm.moc_labels,
            "mrfr_targets": rm.mrfr_targets,
            "itm_labels": itm,
        }
        return inputs, time.perf_counter() - t


def peer_inputs(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The same batch in VisualBERT's API: text then regions; MLM labels span both (-100 on regions)."""
    ids = inputs["input_ids"]
    b, r = inputs["region_mask"].shape
    labels = torch.cat([inputs["mlm_labels"], torch.full((b, r), -100, dtype=torch.long)], dim=1)
    return {
        "input_ids": ids,
        "attention_mask": inputs["attention_mask"],
        "token_type_ids": torch.zeros_like(ids),
        "visual_embeds": inputs["mrfr_targets"],  # the original (unmasked) features
        "visual_attention_mask": inputs["region_mask"],
        "visual_token_type_ids": torch.ones(b, r, dtype=torch.long),
        "labels": labels,
        "sentence_image_labels": 1 - inputs["itm_labels"],  # VisualBERT: 0 = matching
    }


# --------------------------------------------------------------------------------------------- models
def build_ours(sizes: Sizes, *, mlm_itm_only: bool = False, seed: int = 0) -> torch.nn.Module:
    from imagebert.modeling import ImageBertConfig, ImageBertForPreTraining

    torch.manual_seed(seed)
    cfg = ImageBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                          num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                          visual_feature_dim=sizes.feature_dim, max_regions=max(sizes.regions, 1),
                          max_text_tokens=43, num_object_classes=sizes.num_classes)  # fmt: skip
    model = ImageBertForPreTraining(cfg).train()
    if mlm_itm_only:
        set_tasks(model, moc=False, mrfr=False)
    return model


def set_tasks(model: torch.nn.Module, **switches: bool) -> None:
    """Turn pre-training tasks on/off (model.tasks in the current layout, config.task_* in the older one)."""
    import dataclasses

    if hasattr(model, "tasks"):
        model.tasks = dataclasses.replace(model.tasks, **switches)
    else:
        for k, v in switches.items():
            setattr(model.config, f"task_{k}", v)


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The ImageBertModel inside a task model (`bert`, or `imagebert` in the older layout)."""
    return model.bert if hasattr(model, "bert") else model.imagebert


def mlm_head_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.cls if hasattr(model, "cls") else model.mlm_head


def task_on(model: torch.nn.Module, name: str) -> bool:
    return (
        bool(getattr(model.tasks, name))
        if hasattr(model, "tasks")
        else bool(getattr(model.config, f"task_{name}"))
    )


def build_peer(sizes: Sizes, seed: int = 0) -> torch.nn.Module:
    from transformers import VisualBertConfig, VisualBertForPreTraining

    torch.manual_seed(seed)
    cfg = VisualBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                           num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                           visual_embedding_dim=sizes.feature_dim)  # fmt: skip
    return VisualBertForPreTraining(cfg).train()


def _autocast(precision: str, device: str = "cpu"):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)


class RowCounter:
    """Counts the rows (positions) that go through an MLM head: a forward hook on the head module, so what is
    counted is what really ran, not what a formula assumes."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.rows = 0
        head.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        self.rows = int(inputs[0].shape[:-1].numel())


def matched_mlm_labels(inputs: dict[str, Any]) -> torch.Tensor:
    """MLM labels of matched pairs only (the paper's conditional masking: a mismatched caption is not predicted)."""
    matched = inputs["itm_labels"] == 1
    return torch.where(matched[:, None], inputs["mlm_labels"], torch.full_like(inputs["mlm_labels"], -100))


def _ours_all_positions_loss(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """Our encoder and heads with the MLM head run on EVERY position (text and regions), as VisualBERT does;
    the loss still counts only the masked text tokens of matched pairs."""
    out = encoder_of(model)(inputs["input_ids"], inputs["attention_mask"], inputs["region_features"],
                          inputs["region_locations"], inputs["region_mask"])  # fmt: skip
    hidden = out.last_hidden_state
    b, length, _ = hidden.shape
    r = inputs["region_features"].shape[1]
    text_labels = matched_mlm_labels(inputs)
    labels = torch.full((b, length), -100, dtype=torch.long)
    labels[:, 0] = text_labels[:, 0]
    labels[:, r + 2 :] = text_labels[:, 1:]
    logits = mlm_head_of(model)(hidden).float()
    mlm = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    itm_logits = model.itm_head(model.itm_readout(out, inputs["attention_mask"], inputs["region_mask"]))
    itm = F.binary_cross_entropy_with_logits(itm_logits.squeeze(-1).float(), inputs["itm_labels"].float())
    return mlm + itm


def _peer_masked_loss(model: torch.nn.Module, peer: dict[str, torch.Tensor]) -> torch.Tensor:
    """VisualBERT's own encoder and heads, with its MLM head gathered to the masked positions (as ours does)."""
    out = model.visual_bert(input_ids=peer["input_ids"], attention_mask=peer["attention_mask"],
                            token_type_ids=peer["token_type_ids"], visual_embeds=peer["visual_embeds"],
                            visual_attention_mask=peer["visual_attention_mask"],
                            visual_token_type_ids=peer["visual_token_type_ids"])  # fmt: skip
    seq, pooled = out[0], out[1]
    where = peer["labels"] != -100
    logits = model.cls.predictions(seq[where]).float()
    mlm = F.cross_entropy(logits, peer["labels"][where])
    itm = F.cross_entropy(model.cls.seq_relationship(pooled).float(), peer["sentence_image_labels"])
    return mlm + itm


def peer_inputs_matched(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`peer_inputs` with MLM labels on matched pairs only, so both models predict exactly the same tokens."""
    return peer_inputs({**inputs, "mlm_labels": matched_mlm_labels(inputs)})


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
                precision: str, master: Any = None) -> None:  # fmt: skip
    """One step; with `master` (a MasterWeights), `opt` updates its fp32 masters, as the Trainer does."""
    with _autocast(precision):
        loss = loss_fn()
    loss.backward()
    if master is not None:
        master.grads_to_masters()
    params = [m for _, m in master.pairs] if master is not None else list(model.parameters())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if master is not None:
        master.masters_to_model()
    opt.zero_grad(set_to_none=True)


SETTINGS = ("ours_masked", "visualbert_masked", "ours_allpos", "visualbert_allpos")


def training_settings(sizes: Sizes, inputs: dict[str, Any], precision: str,
                      models: dict[str, torch.nn.Module]) -> dict[str, Callable[[], dict[str, Any]]]:  # fmt: skip
    """The four like-for-like steps on one prepared batch. "masked": both MLM heads run on the masked text tokens
    of matched pairs only; "allpos": both run on every position of the joint sequence (VisualBERT's own forward).
    Both sides: MLM + ITM, dropout 0.1, clip 1.0, fused AdamW, the same batch and the same predicted tokens."""
    ours, peer = models["ours"], models["visualbert"]
    ours_rows, peer_rows = RowCounter(mlm_head_of(ours)), RowCounter(peer.cls.predictions)
    opts = {name: _optimizer(ours if name.startswith("ours") else peer) for name in SETTINGS}
    p_in = peer_inputs_matched(inputs)
    b, t = inputs["input_ids"].shape
    r = inputs["region_features"].shape[1]
    ours_len, peer_len = t + r + 1, t + r

    def flops(seq_len: int, head_rows: int) -> int:
        return train_step_flops(sizes=sizes, seq_len=seq_len, batch=b, regions=r, mlm_positions=0,
                                mlm_head_positions=head_rows)["total"]  # fmt: skip

    def make(name: str) -> Callable[[], dict[str, Any]]:
        is_ours = name.startswith("ours")
        model = ours if is_ours else peer
        counter = ours_rows if is_ours else peer_rows
        seq_len = ours_len if is_ours else peer_len
        if name == "ours_masked":
            loss_fn = lambda: model(**inputs).loss  # noqa: E731
        elif name == "ours_allpos":
            loss_fn = lambda: _ours_all_positions_loss(model, inputs)  # noqa: E731
        elif name == "visualbert_masked":
            loss_fn = lambda: _peer_masked_loss(model, p_in)  # noqa: E731
        else:
            loss_fn = lambda: model(**p_in).loss  # noqa: E731

        def step() -> dict[str, Any]:
            _train_step(model, opts[name], loss_fn, precision)
            return {"mlm_head_rows": counter.rows, "seq_len": seq_len, "flops": flops(seq_len, counter.rows)}

        return step

    return {name: make(name) for name in SETTINGS}


# --------------------------------------------------------------------------------------------- matmul rates
def _median_cpu(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        c = time.process_time()
        fn()
        times.append(time.process_time() - c)
    return float(statistics.median(times))


def step_matmul_rates(dtype: torch.dtype, rows: int, hidden: int, intermediate: int,
                      reps: int = 5) -> dict[str, Any]:  # fmt: skip
    """The machine's matmul rate on one encoder layer's own products, forward and backward, in `dtype`.

    Per layer: Q, K, V, O (rows x H) @ (H x H), FFN in (rows x H) @ (H x I), FFN out (rows x I) @ (I x H).
    Forward: x @ W^T. Backward: input gradient dY @ W and weight gradient dY^T @ x (the transposed operand
    autograd uses). Rates are FLOPs / CPU seconds summed over the layer's products, so they weight each shape
    as the step does."""
    shapes = [(hidden, hidden)] * 4 + [(hidden, intermediate), (intermediate, hidden)]  # (in, out)
    cache: dict[tuple[int, int], dict[str, float]] = {}
    for k_in, k_out in set(shapes):
        x = torch.randn(rows, k_in).to(dtype)
        w = torch.randn(k_out, k_in).to(dtype)
        dy = torch.randn(rows, k_out).to(dtype)
        cache[(k_in, k_out)] = {
            "fwd": _median_cpu(lambda: F.linear(x, w), reps),  # noqa: B023
            "dgrad": _median_cpu(lambda: dy @ w, reps),  # noqa: B023
            "wgrad": _median_cpu(lambda: dy.t() @ x, reps),  # noqa: B023
        }
    flops = sum(2 * rows * a * b for a, b in shapes)
    fwd_s = sum(cache[s]["fwd"] for s in shapes)
    bwd_s = sum(cache[s]["dgrad"] + cache[s]["wgrad"] for s in shapes)
    return {
        "rows": rows,
        "forward_flops_per_s": flops / fwd_s,
        "backward_flops_per_s": 2 * flops / bwd_s,
        "dgrad_flops_per_s": flops / sum(cache[s]["dgrad"] for s in shapes),
        "wgrad_flops_per_s": flops / sum(cache[s]["wgrad"] for s in shapes),
    }


def utilisation(flops: int, seconds: float, rates: dict[str, Any]) -> dict[str, float]:
    """How close a step is to the matmul limit of its own shapes: the time its FLOPs would take at the measured
    forward rate (one third of the FLOPs) and backward rate (two thirds), over the step's CPU time. The old,
    flattering definition (all FLOPs at the forward rate) is kept beside it for comparison."""
    bound = flops / 3 / rates["forward_flops_per_s"] + 2 * flops / 3 / rates["backward_flops_per_s"]
    return {
        "utilisation": bound / seconds,
        "utilisation_fwd_rate_only": flops / seconds / rates["forward_flops_per_s"],
    }


# --------------------------------------------------------------------------------------------- training run
def training_comparison(sizes: Sizes, precisions: list[str], *, warmup: int = 3, min_reps: int = 3,
                        max_reps: int = 8, target_spread: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Ours vs VisualBERT on the same work, per precision, interleaved, with the matmul rates of the step."""
    builder = BatchBuilder(sizes)
    pairs = make_pairs(sizes.batch, sizes)
    inputs, _ = builder(pairs, seed=1)
    collate = [builder(pairs, seed=s)[1] for s in range(3)]
    models = {"ours": build_ours(sizes, mlm_itm_only=True), "visualbert": build_peer(sizes)}
    result: dict[str, Any] = {
        "collate_mask_s": float(statistics.median(collate)),
        "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()},
    }
    for prec in precisions:
        steps = training_settings(sizes, inputs, prec, models)
        series = run_interleaved(steps, warmup=warmup, min_reps=min_reps, max_reps=max_reps,
                                 target_spread=target_spread, log=lambda m, p=prec: _log(f"{p} {m}"))  # fmt: skip
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        rows = sizes.batch * series["ours_masked"].info["seq_len"]
        rates = step_matmul_rates(dtype, rows, sizes.hidden, sizes.intermediate)
        settings = {}
        for name, s in series.items():
            row = s.summary()
            row["samples_per_cpu_s"] = sizes.batch / s.cpu_s
            row["samples_per_wall_s"] = sizes.batch / s.wall_s
            row["gflop_per_cpu_s"] = row["flops"] / s.cpu_s / 1e9
            row.update(utilisation(row["flops"], s.cpu_s, rates))
            settings[name] = row
        ratios = {
            "masked": paired_ratio(series["visualbert_masked"], series["ours_masked"]),
            "allpos": paired_ratio(series["visualbert_allpos"], series["ours_allpos"]),
            "masked_wall": paired_ratio(series["visualbert_masked"], series["ours_masked"], "wall"),
            "allpos_wall": paired_ratio(series["visualbert_allpos"], series["ours_allpos"], "wall"),
        }
        result[prec] = {"settings": settings, "rates": rates, "ratios": ratios}
    return result


def _log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- scoring run
def scoring_gallery(sizes: Sizes, num_images: int, captions_per_image: int, *, variable_regions: bool = False,
                    seed: int = 0):  # fmt: skip
    """A gallery of synthetic records (all with `sizes.regions` boxes, or 10..regions when variable)."""
    from imagebert.retrieval.scorers import Gallery

    rng = np.random.default_rng(seed)
    pairs = make_pairs(num_images, sizes, seed=seed)
    records = []
    for rec, _ in pairs:
        n = (
            int(rng.integers(min(10, sizes.regions), sizes.regions + 1))
            if variable_regions
            else sizes.regions
        )
        records.append(RegionRecord(rec.image_id, rec.features[:n], rec.boxes[:n], rec.image_width,
                                    rec.image_height, rec.class_ids[:n]))  # fmt: skip
    captions = [(rec.image_id, " ".join(rng.choice(WORDS, sizes.words))) for rec in records
                for _ in range(captions_per_image)]  # fmt: skip
    return Gallery.from_records(records, captions)


def build_retrieval(sizes: Sizes, seed: int = 0) -> torch.nn.Module:
    from imagebert.modeling import ImageBertConfig, ImageBertForRetrieval

    torch.manual_seed(seed)
    cfg = ImageBertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                          num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                          visual_feature_dim=sizes.feature_dim, max_regions=max(sizes.regions, 1),
                          max_text_tokens=43)  # fmt: skip
    return ImageBertForRetrieval(cfg).eval()


SCORER_SETTINGS = {
    # name: ModelPairScorer keyword arguments (precision "auto" is bf16 on this AMX machine)
    "fp32": {"precision": "fp32"},
    "bf16_autocast": {"precision": "bf16"},
    "bf16_resident": {"precision": "bf16", "weights": "bf16"},
}


def build_scorers(sizes: Sizes, settings: dict[str, dict], *, pairs: int = 128, batch_size: int = 128,
                  variable_regions: bool = False,
                  build_times: dict[str, tuple[float, float]] | None = None,
                  ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """One retrieval model and gallery, a `ModelPairScorer` per setting (its keyword arguments), and the pairs to
    score: every caption against every image, cut to `pairs`. `build_times`, when given, receives each scorer's
    (CPU s, wall s) of construction (where an int8 copy is quantised and calibrated)."""
    from imagebert.data.collate import PairCollator
    from imagebert.modeling import load_tokenizer
    from imagebert.retrieval.scorers import ModelPairScorer

    per_image = 8
    gallery = scoring_gallery(
        sizes, max(1, -(-pairs // per_image)), per_image, variable_regions=variable_regions
    )
    collator = PairCollator(load_tokenizer(), max_text_tokens=43, max_regions=max(sizes.regions, 1),
                            feature_dim=sizes.feature_dim, truncate_regions=True)  # fmt: skip
    model = build_retrieval(sizes)
    cap = np.repeat(np.arange(gallery.num_captions), gallery.num_images)[:pairs]
    img = np.tile(np.arange(gallery.num_images), gallery.num_captions)[:pairs]
    scorers = {}
    for name, kw in settings.items():
        cpu, wall, scorers[name] = timed(
            lambda kw=kw: ModelPairScorer(model, collator, gallery, batch_size=batch_size, **kw),
            with_children=True,
        )
        if build_times is not None:
            build_times[name] = (cpu, wall)
    return scorers, cap, img


def scoring_comparison(sizes: Sizes, *, pairs: int = 128, batch_size: int = 128, settings: dict | None = None,
                       variable_regions: bool = False, warmup: int = 3, min_reps: int = 3, max_reps: int = 6,
                       target_spread: float = 0.05, time_setup: bool = False) -> dict[str, Any]:  # fmt: skip
    """Pairs/s through the scorer `imagebert evaluate` runs (`ModelPairScorer.score_pairs`), interleaved.
    `time_setup`: also record each setting's set-up, construction plus its first call (where a compiled setting
    compiles), as `setup_cpu_s` / `setup_wall_s`. The untimed warm-up rounds still follow all the set-ups: a
    later setting's compile can reset torch's compiled-code caches (inductor's quantisation passes call
    `torch._dynamo.reset`), and a setting set up before it then compiles once more, which no single-scorer run
    pays and a timed round must not carry."""
    settings = settings or SCORER_SETTINGS
    build_times: dict[str, tuple[float, float]] = {}
    scorers, cap, img = build_scorers(sizes, settings, pairs=pairs, batch_size=batch_size,
                                      variable_regions=variable_regions, build_times=build_times)  # fmt: skip
    scores: dict[str, np.ndarray] = {}

    def make(name: str) -> Callable[[], None]:
        def step() -> None:
            scores[name] = scorers[name].score_pairs(cap, img)

        return step

    setup: dict[str, tuple[float, float]] = {}
    if time_setup:
        for name in scorers:
            cpu, wall, _ = timed(make(name), with_children=True)  # a compile's C++ compiler is a child
            setup[name] = (build_times[name][0] + cpu, build_times[name][1] + wall)
    series = run_interleaved({n: make(n) for n in scorers}, warmup=warmup, min_reps=min_reps, max_reps=max_reps,
                             target_spread=target_spread, log=lambda m: _log(f"scoring {m}"))  # fmt: skip
    first = next(iter(scorers))
    out: dict[str, Any] = {"pairs": len(cap), "batch_size": batch_size, "variable_regions": variable_regions,
                           "settings": {}}  # fmt: skip
    for name, s in series.items():
        row = s.summary()
        row["pairs_per_cpu_s"] = len(cap) / s.cpu_s
        row["pairs_per_wall_s"] = len(cap) / s.wall_s
        row["max_abs_score_diff_vs_" + first] = float(np.abs(scores[name] - scores[first]).max())
        row["vs_" + first] = paired_ratio(series[first], s)
        row["kwargs"] = settings[name]
        if name in setup:
            row["setup_cpu_s"], row["setup_wall_s"] = setup[name]
        out["settings"][name] = row
    return out


def scoring_settings_table(sc: dict[str, Any]) -> list[str]:
    """The markdown table of a `scoring_comparison` result, one row per setting (with the set-up columns when it
    was timed): the one layout every page that compares scorer settings prints."""
    first = next(iter(sc["settings"]))
    with_setup = any("setup_wall_s" in t for t in sc["settings"].values())
    head = "| setting | scorer arguments | reps | pairs/CPU-s | spread | pairs/wall-s | spread | "
    head += f"speed-up vs {first} (CPU, per round) | max abs score diff vs {first} |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    if with_setup:
        head += " set-up: build + first call, CPU s / wall s |"
        rule += "---|"
    lines = [head, rule]
    for name, t in sc["settings"].items():
        v = t["vs_" + first]
        line = (
            f"| {name} | `{t['kwargs']}` | {t['reps']} | {t['pairs_per_cpu_s']:.2f} | {fmt_spread(t['cpu_spread'])} | "
            f"{t['pairs_per_wall_s']:.2f} | {fmt_spread(t['wall_spread'])} | {v['median']:.3f}x ({fmt_spread(v['spread'])}) | "
            f"{t['max_abs_score_diff_vs_' + first]:.2e} |"
        )
        if with_setup:
            line += f" {t['setup_cpu_s']:.1f} / {t['setup_wall_s']:.1f} |" if "setup_wall_s" in t else " |"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------- data
def store_read_speed(sizes: Sizes, n: int = 100, reads: int = 300) -> dict[str, float]:
    """Random-order reads (decode to RegionRecord) from a temporary store of n records, samples/s."""
    from imagebert.data.store import FeatureStore, FeatureStoreWriter

    pairs = make_pairs(n, sizes, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        with FeatureStoreWriter(path, feature_dim=sizes.feature_dim, dtype="float16") as w:
            for rec, _ in pairs:
                w.add(rec)
        store = FeatureStore(path)
        ids = [rec.image_id for rec, _ in pairs]
        order = np.random.default_rng(0).integers(0, n, reads)
        store[ids[0]]
        t = time.perf_counter()
        for k in order:
            rec = store[ids[k]]
            rec.features.astype(np.float32)  # what the collator does with it
        dt = time.perf_counter() - t
    return {"records": n, "reads": reads, "samples_per_s": reads / dt}


# --------------------------------------------------------------------------------------------- profile
OP_GROUPS = {
    "matmul (mm, addmm, bmm)": (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_weight_int8pack_mm",
    ),
    "dtype casts and copies": (
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::clone",
        "aten::contiguous",
    ),
    "optimizer (fused AdamW)": ("aten::_fused_adamw_",),
    "dropout RNG": ("aten::bernoulli_",),
    "LayerNorm fwd+bwd": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "GELU fwd+bwd": ("aten::gelu", "aten::gelu_backward"),
    "softmax fwd+bwd": (
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
    ),
    "embedding grad": ("aten::embedding_dense_backward", "aten::fill_", "aten::index_add_"),
}


def profile_ours(sizes: Sizes, precision: str = "bf16", steps: int = 2, row_limit: int = 20) -> str:
    """torch.profiler table (self CPU time) of `steps` of our all-task step after one warm-up step, preceded by
    the share of self time per op group (matmul vs casts vs optimizer vs element-wise)."""
    from torch.profiler import ProfilerActivity, profile

    builder = BatchBuilder(sizes)
    pairs = make_pairs(sizes.batch, sizes)
    model = build_ours(sizes)
    inputs, _ = builder(pairs)
    opt = _optimizer(model)

    def step() -> None:
        _train_step(model, opt, lambda: model(**inputs).loss, precision)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"{precision}, {steps} steps, self CPU total {total / 1e6:.2f} s",
        "",
        "| op group | share |",
        "|---|---|",
    ]
    grouped = 0.0
    for group, names in OP_GROUPS.items():
        t = sum(e.self_cpu_time_total for e in events if e.key in names)
        grouped += t
        lines.append(f"| {group} | {100 * t / total:.1f}% |")
    lines.append(
        f"| everything else (element-wise mul/add/sum, masks, Python) | {100 * (total - grouped) / total:.1f}% |"
    )
    return "\n".join(lines) + "\n\n" + events.table(sort_by="self_cpu_time_total", row_limit=row_limit)


ALL_PARTS = ("training", "scoring", "bucketing", "store")


# --------------------------------------------------------------------------------------------- report
def run_all(sizes: Sizes, *, precisions: list[str] | None = None, min_reps: int = 3, max_reps: int = 8,
            warmup: int = 3, score_pairs: int = 128, store_records: int = 100, parts: tuple[str, ...] = ALL_PARTS,
            target_spread: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Every part of the benchmark; one intra-op thread throughout."""
    from benchmarks.timing import machine_line, one_thread

    one_thread()
    precisions = precisions or ["fp32", "bf16"]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "sizes": asdict(sizes),
        "machine": machine_line(),
        "load_start": os.getloadavg(),
        "warmup_rounds": warmup,
    }
    if "training" in parts:
        report["training"] = training_comparison(sizes, precisions, warmup=warmup, min_reps=min_reps,
                                                 max_reps=max_reps, target_spread=target_spread)  # fmt: skip
    if "scoring" in parts:
        report["scoring"] = scoring_comparison(sizes, pairs=score_pairs, batch_size=min(128, score_pairs),
                                               warmup=warmup, min_reps=min_reps, max_reps=max_reps,
                                               target_spread=target_spread)  # fmt: skip
    if "bucketing" in parts:
        report["bucketing"] = scoring_comparison(
            sizes, pairs=score_pairs, batch_size=max(1, min(128, score_pairs) // 4), variable_regions=True,
            settings={"unsorted": {"precision": "bf16", "sort_pairs": False},
                      "length_sorted": {"precision": "bf16"}},
            warmup=warmup, min_reps=min_reps, max_reps=max_reps, target_spread=target_spread,
        )  # fmt: skip
    if "store" in parts:
        report["store"] = store_read_speed(sizes, n=store_records)
    report["load_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - t0
    return report


def to_markdown(report: dict[str, Any]) -> str:
    """The tables of one run (the caller adds the Command:/Machine: header)."""
    s = report["sizes"]
    lines = [
        f"Sizes: {s['layers']} layers, hidden {s['hidden']}, FFN {s['intermediate']}, vocab {s['vocab']}, "
        f"{s['regions']} regions x {s['feature_dim']}-d, {s['words']}-word captions, batch {s['batch']}. "
        f"Load average (1 min) at start {report['load_start'][0]:.2f}, at end {report['load_end'][0]:.2f}. "
        f"Whole run {report['wall_s']:.0f} s. {report.get('warmup_rounds', 1)} untimed warm-up round(s) per table. "
        "Times are medians of the repetitions; spread = (max - min) / median "
        "over the repetitions; ratios are per round (same load on both sides), median and spread.",
    ]
    tr = report.get("training")
    if tr:
        lines += [
            "",
            "### Training step, like for like (MLM + ITM, same batch, same predicted tokens)",
            "",
            f"Collate + mask of the batch (real `PairCollator` + `TextMasker` + `mask_regions`, not in the step "
            f"times below): {1000 * tr['collate_mask_s']:.1f} ms.",
            "",
            "| precision | setting | MLM head rows | seq len | reps | CPU s/step | spread | wall s/step | spread | "
            "samples/CPU-s | GFLOP/step | GFLOP/CPU-s | utilisation (fwd+bwd rates) | utilisation (fwd rate only) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for prec in ("fp32", "bf16"):
            if prec not in tr:
                continue
            for name, t in tr[prec]["settings"].items():
                lines.append(
                    f"| {prec} | {name} | {t['mlm_head_rows']} | {t['seq_len']} | {t['reps']} | {t['cpu_s']:.3f} | "
                    f"{fmt_spread(t['cpu_spread'])} | {t['wall_s']:.3f} | {fmt_spread(t['wall_spread'])} | "
                    f"{t['samples_per_cpu_s']:.3f} | {t['flops'] / 1e9:.1f} | {t['gflop_per_cpu_s']:.1f} | "
                    f"{100 * t['utilisation']:.1f}% | {100 * t['utilisation_fwd_rate_only']:.1f}% |"
                )
        lines += ["", "| precision | work | ours vs VisualBERT, CPU time (spread) | same, wall time (spread) |",
                  "|---|---|---|---|"]  # fmt: skip
        for prec in ("fp32", "bf16"):
            if prec not in tr:
                continue
            r = tr[prec]["ratios"]
            for work, label in (("masked", "MLM on masked tokens only"), ("allpos", "MLM on every position")):
                lines.append(f"| {prec} | {label} | {r[work]['median']:.3f}x ({fmt_spread(r[work]['spread'])}) | "
                             f"{r[work + '_wall']['median']:.3f}x ({fmt_spread(r[work + '_wall']['spread'])}) |")  # fmt: skip
        lines.append("")
        for prec in ("fp32", "bf16"):
            if prec not in tr:
                continue
            rt = tr[prec]["rates"]
            lines.append(
                f"- {prec} matmul rates on one encoder layer's own products ({rt['rows']} rows, 1 thread, CPU time): "
                f"forward {rt['forward_flops_per_s'] / 1e9:.1f} GFLOP/s, backward "
                f"{rt['backward_flops_per_s'] / 1e9:.1f} GFLOP/s (input gradient "
                f"{rt['dgrad_flops_per_s'] / 1e9:.1f}, weight gradient {rt['wgrad_flops_per_s'] / 1e9:.1f})."
            )
    for key, title in (("scoring", "Retrieval scoring through `ModelPairScorer` (what `imagebert evaluate` runs)"),
                       ("bucketing", "Length bucketing: variable region counts (10..max), batch of a quarter")):  # fmt: skip
        sc = report.get(key)
        if not sc:
            continue
        lines += [
            "",
            f"### {title}",
            "",
            f"{sc['pairs']} pairs per repetition, batch {sc['batch_size']}, fp32 score head in every setting.",
            "",
            *scoring_settings_table(sc),
        ]
    st = report.get("store")
    if st:
        lines += ["", "### Data loading", "", "| data | samples/s |", "|---|---|",
                  f"| feature store random reads ({st['records']} records, fp16 -> fp32) | {st['samples_per_s']:.0f} |"]  # fmt: skip
        if tr:
            best = max(t["samples_per_wall_s"] for p in ("fp32", "bf16") if p in tr
                       for t in tr[p]["settings"].values())  # fmt: skip
            lines += [f"| fastest training step's consumption (wall) | {best:.3f} |",
                      f"| store headroom | {st['samples_per_s'] / best:.0f}x |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def results_page(report: dict[str, Any], argv: list[str]) -> str:
    from benchmarks.timing import command_line

    head = [
        "# Speed: ImageBERT against VisualBERT on the same work, and against the matmul rate of its own shapes",
        "",
        command_line("benchmarks.speed", argv),
        "",
        report["machine"],
        "",
        "Written by `benchmarks/speed.py` (do not edit by hand). Method: docs/performance.md.",
        "",
    ]
    return "\n".join(head) + to_markdown(report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for checking the code runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (the heap settles)")
    ap.add_argument("--target-spread", type=float, default=0.05)
    ap.add_argument("--score-pairs", type=int, default=128, help="pairs per scoring repetition")
    ap.add_argument("--parts", default=",".join(ALL_PARTS), help=f"comma-separated subset of {ALL_PARTS}")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--profile", choices=["fp32", "bf16"], default=None,
                    help="print the top ops (torch.profiler) of our step in this precision and exit")  # fmt: skip
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results page (markdown) here")
    ap.add_argument("--json", default=None, help="write the raw report (JSON) here")
    args = ap.parse_args(argv)
    sizes = tiny_sizes(args.batch_size) if args.quick else Sizes(batch=args.batch_size)
    if args.profile:
        torch.set_num_threads(1)
        print(profile_ours(sizes, args.profile, steps=args.profile_steps))
        return 0
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from {ALL_PARTS}")
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    report = run_all(sizes, precisions=precisions, min_reps=args.min_reps, max_reps=args.max_reps,
                     warmup=args.warmup, score_pairs=args.score_pairs, store_records=20 if args.quick else 100,
                     parts=parts, target_spread=args.target_spread)  # fmt: skip
    page = results_page(report, argv)
    write_outputs(page, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
