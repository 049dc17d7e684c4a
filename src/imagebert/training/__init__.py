"""Pre-training: the four-task batches, the reusable Trainer (precision, DDP, checkpoints), multi-stage runs.

Names are imported lazily so that `imagebert --help` and the light CLI commands do not pay for torch.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "InMemoryPairDataset": "imagebert.training.pairs",
    "PairPool": "imagebert.training.pairs",
    "ItmConfig": "imagebert.training.pretraining",
    "PretrainConfig": "imagebert.training.pretraining",
    "PretrainTask": "imagebert.training.pretraining",
    "StageConfig": "imagebert.training.pretraining",
    "load_pretrain_config": "imagebert.training.pretraining",
    "run_pretraining": "imagebert.training.pretraining",
    "NonFiniteLossError": "imagebert.training.trainer",
    "Trainer": "imagebert.training.trainer",
    "TrainerConfig": "imagebert.training.trainer",
    "TrainTask": "imagebert.training.trainer",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("imagebert.training", _LAZY)
