"""The fault-injection tests use the robustness suite's fixtures (tiny BERT, checkpoint, dataset writers, one
intra-op thread)."""

from tests.robustness.conftest import (  # noqa: F401
    _one_thread,
    make_corpus,
    tiny_bert,
    tiny_checkpoint,
    write_dataset,
    write_karpathy_dataset,
    write_pretrain_yaml,
)
