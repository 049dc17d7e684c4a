"""Shared fixtures for the robustness tests: the tiny BERT, checkpoint and dataset writers of the area suites."""

from __future__ import annotations

import pytest

from tests.retrieval.conftest import tiny_checkpoint, write_karpathy_dataset  # noqa: F401
from tests.training.conftest import (  # noqa: F401
    make_corpus,
    tiny_bert,
    write_dataset,
    write_pretrain_yaml,
)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
