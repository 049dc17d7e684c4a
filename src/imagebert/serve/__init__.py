"""Image-text search over your own collection: `imagebert index build|add|info` and `imagebert serve`.

Public API:
    build_index(checkpoint, out, dataset=... | features=..., captions=...) -> IndexSummary
    add_to_index(index_dir, checkpoint, ...) -> IndexSummary     (a new shard; nothing is rebuilt)
    GalleryIndex(index_dir)                                        the loaded index (embeddings, ids, captions)
    Searcher(index, model, collator, ...)                          first stage + cross-encoder re-ranking
    create_app(searcher, ...)                                      the FastAPI application
    itc_projections_trained(config) -> bool
"""

from __future__ import annotations

from imagebert._lazy import lazy_getattr

_LAZY = {
    "itc_projections_trained": "imagebert.serve.index",
    "build_index": "imagebert.serve.index",
    "add_to_index": "imagebert.serve.index",
    "GalleryIndex": "imagebert.serve.index",
    "IndexSummary": "imagebert.serve.index",
    "UntrainedProjectionsError": "imagebert.serve.index",
    "Searcher": "imagebert.serve.search",
    "create_app": "imagebert.serve.service",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr("imagebert.serve", _LAZY)
