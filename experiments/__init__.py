"""Experiments behind docs/training.md: each module regenerates one table or figure in docs/experiments/."""
