"""The ImageBERT model: config, embeddings and sequence layout, encoder, heads."""

from imagebert.modeling.configuration import ImageBertConfig
from imagebert.modeling.heads import contrastive_loss
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

__all__ = [
    "ImageBertConfig",
    "ImageBertModel",
    "ImageBertForPreTraining",
    "ImageBertForRetrieval",
    "ImageBertModelOutput",
    "ImageBertForPreTrainingOutput",
    "ImageBertRetrievalOutput",
    "contrastive_loss",
    "default_bert_path",
    "load_tokenizer",
    "region_locations",
    "itc_projections_trained",
]
