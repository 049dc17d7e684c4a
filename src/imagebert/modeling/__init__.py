"""The ImageBERT model: config, embeddings and sequence layout, encoder, heads, and the processor.

Importing this package registers the classes with transformers' Auto API (`AutoConfig.for_model("imagebert")`,
`AutoModel` / `AutoModelForPreTraining.from_pretrained(saved_dir)`, `AutoProcessor`).
"""

import contextlib

from imagebert.modeling.configuration import ImageBertConfig
from imagebert.modeling.heads import contrastive_loss, contrastive_loss_from_log_scale
from imagebert.modeling.inputs import default_bert_path, load_tokenizer, region_locations
from imagebert.modeling.model import (
    ImageBertForPreTraining,
    ImageBertForPreTrainingOutput,
    ImageBertForRetrieval,
    ImageBertModel,
    ImageBertModelOutput,
    ImageBertRetrievalOutput,
    itc_projections_trained,
)
from imagebert.modeling.processing import ImageBertProcessor
from imagebert.modeling.tasks import PretrainingTasks


def _register_auto_classes() -> None:
    """Make the Auto classes resolve model_type "imagebert" (idempotent: a re-import must not raise)."""
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor

    registrations = (
        (lambda: AutoConfig.register("imagebert", ImageBertConfig)),
        (lambda: AutoModel.register(ImageBertConfig, ImageBertModel)),
        (lambda: AutoModelForPreTraining.register(ImageBertConfig, ImageBertForPreTraining)),
        (lambda: AutoProcessor.register(ImageBertConfig, ImageBertProcessor)),
    )
    for register in registrations:
        with contextlib.suppress(ValueError):  # already registered (module reloaded)
            register()


_register_auto_classes()

__all__ = [
    "ImageBertConfig",
    "ImageBertModel",
    "ImageBertForPreTraining",
    "ImageBertForRetrieval",
    "ImageBertModelOutput",
    "ImageBertForPreTrainingOutput",
    "ImageBertRetrievalOutput",
    "ImageBertProcessor",
    "PretrainingTasks",
    "contrastive_loss",
    "contrastive_loss_from_log_scale",
    "default_bert_path",
    "load_tokenizer",
    "region_locations",
    "itc_projections_trained",
]
