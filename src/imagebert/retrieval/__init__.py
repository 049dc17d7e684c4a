"""Image-text retrieval: fine-tuning (paper section 4.4) and evaluation (exhaustive and fast modes).

Public API:
    run_finetuning(config) -> best checkpoint dir;  load_finetune_config(path, overrides)
    evaluate_checkpoint(checkpoint, dataset_yaml, split=, protocol=, out_dir=, options=EvalOptions(...))
    evaluate_gallery(model, collator, Gallery, protocol, EvalOptions) for in-memory galleries
    recall_at_k / fold_average_recall on any caption x image score matrix
    RetrievalValidator (the fine-tuning validation callback), retrieval_loss / contrastive_loss, select_hard
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "FinetuneConfig": "imagebert.tasks.retrieval",
    "load_finetune_config": "imagebert.tasks.retrieval",
    "run_finetuning": "imagebert.tasks.retrieval",
    "EvalOptions": "imagebert.retrieval.evaluate",
    "evaluate_checkpoint": "imagebert.retrieval.evaluate",
    "evaluate_gallery": "imagebert.retrieval.evaluate",
    "load_retrieval_model": "imagebert.retrieval.evaluate",
    "Gallery": "imagebert.retrieval.scorers",
    "ModelPairScorer": "imagebert.retrieval.scorers",
    "RecallResult": "imagebert.retrieval.metrics",
    "recall_at_k": "imagebert.retrieval.metrics",
    "fold_average_recall": "imagebert.retrieval.metrics",
    "score_matrix": "imagebert.retrieval.engine",
    "BlockPlan": "imagebert.retrieval.engine",
    "gallery_from_dataset": "imagebert.retrieval.evaluate",
    "report_markdown": "imagebert.retrieval.evaluate",
    "RetrievalValidator": "imagebert.retrieval.validation",
    "make_plan": "imagebert.retrieval.validation",
    "make_gallery_plan": "imagebert.retrieval.validation",
    "LossWeights": "imagebert.retrieval.losses",
    "retrieval_loss": "imagebert.retrieval.losses",
    "contrastive_loss": "imagebert.retrieval.losses",
    "select_hard": "imagebert.retrieval.mining",
    "topk_candidates": "imagebert.retrieval.rerank",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("imagebert.retrieval", _LAZY)
