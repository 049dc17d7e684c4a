"""Pre-training: the four-task batches, the reusable Trainer (precision, DDP, checkpoints), multi-stage runs.

Names are imported lazily so that `imagebert --help` and the light CLI commands do not pay for torch.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "InMemoryPairDataset": "imagebert.training.pairs",
    "PairPool": "imagebert.training.pairs",
    "ItmConfig": "imagebert.tasks.pretraining",
    "PretrainConfig": "imagebert.tasks.pretraining",
    "PretrainTask": "imagebert.tasks.pretraining",
    "StageConfig": "imagebert.tasks.pretraining",
    "load_pretrain_config": "imagebert.tasks.pretraining",
    "run_pretraining": "imagebert.tasks.pretraining",
    "NonFiniteLossError": "imagebert.training.trainer",
    "TaskLoss": "imagebert.training.trainer",
    "Trainer": "imagebert.training.trainer",
    "TrainerConfig": "imagebert.training.trainer",
    "TrainTask": "imagebert.training.trainer",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("imagebert.training", _LAZY)
