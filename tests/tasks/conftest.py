"""The retrieval fixtures (tiny checkpoint, learnable synthetic Karpathy dataset) serve the task tests too."""

from __future__ import annotations

from tests.retrieval.conftest import _one_thread, tiny_checkpoint, write_karpathy_dataset

__all__ = ["_one_thread", "tiny_checkpoint", "write_karpathy_dataset"]
