"""Training tasks beside the generic Trainer: what a batch is, its losses and how a run is driven.

`tasks.pretraining` holds the four-task (plus optional ITC) pre-training batch, ITM negatives and the multi-stage
driver; `tasks.retrieval` holds retrieval fine-tuning (paper section 4.4): its losses, negatives and validation.
The Trainer in `imagebert.training.trainer` only runs the loop, precision, DDP and checkpoints.
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "ItmConfig": "imagebert.tasks.pretraining",
    "PretrainConfig": "imagebert.tasks.pretraining",
    "PretrainTask": "imagebert.tasks.pretraining",
    "StageConfig": "imagebert.tasks.pretraining",
    "load_pretrain_config": "imagebert.tasks.pretraining",
    "run_pretraining": "imagebert.tasks.pretraining",
    "FinetuneConfig": "imagebert.tasks.retrieval",
    "load_finetune_config": "imagebert.tasks.retrieval",
    "run_finetuning": "imagebert.tasks.retrieval",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("imagebert.tasks", _LAZY)
