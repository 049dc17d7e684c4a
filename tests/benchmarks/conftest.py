"""Shared fixtures: the retrieval tests' tiny checkpoint (a real folder, built once per session) and model."""

from tests.retrieval.conftest import tiny_checkpoint, tiny_model_and_collator  # noqa: F401
