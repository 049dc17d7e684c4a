"""Plug-ins used by the tests. A user classifier plug-in that kills its worker process the first time it runs (marker file), to test that a
dead Dask worker loses nothing and duplicates nothing."""

from __future__ import annotations

import os
from pathlib import Path

from imagebert.lait.images import heuristic_type


def factory(cfg):
    inner = heuristic_type(cfg)
    marker = Path(os.environ["LAIT_TEST_KILL_MARKER"])

    def classify(image):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return inner(image)
        os.close(fd)
        os._exit(1)  # a hard kill mid-shard: no cleanup, no exception handler runs

    return classify


class _KeywordScorer:
    """A user scorer plug-in: relevant when the caption mentions a keyword (shows the scorer interface)."""

    neural = False

    def score(self, features, text, image):
        assert image.size[0] > 0 and "bias" in features
        return 0.9 if "dog" in text.lower() else 0.1


def keyword_scorer(cfg):
    return _KeywordScorer()
