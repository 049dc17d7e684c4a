"""Step 3: clean candidate descriptions. Each rule is a named reject so the funnel says why text was dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from imagebert.lait.config import TextConfig

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_FILENAME = re.compile(
    r"^\S+\.(jpe?g|png|gif|webp|bmp|tiff?|svg|heic)$|^(img|dsc|dscn|image|photo|pic|screenshot|pxl)[ _-]?\d+"
    r"|^[\w-]*\d{4,}[\w-]*$|^\w+(_\w+){2,}$",
    re.I,
)


@dataclass
class CleanText:
    source: str
    text: str
    n_words: int
    oov_ratio: float


@lru_cache(maxsize=200_000)
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def oov_ratio(words: list[str], min_zipf: float) -> float:
    """Share of words that are rare or unknown in English (wordfreq Zipf frequency below `min_zipf`)."""
    if not words:
        return 1.0
    return sum(1 for w in words if _zipf(w.lower()) < min_zipf) / len(words)


class TextCleaner:
    def __init__(self, cfg: TextConfig) -> None:
        self.cfg = cfg
        self.boilerplate = [re.compile(p, re.I) for p in cfg.boilerplate_patterns]
        self.spam = [re.compile(p, re.I) for p in cfg.spam_patterns]
        self.banned = {w.lower() for w in cfg.banned_words}

    def normalise(self, text: str) -> str:
        text = " ".join(text.replace("\u00a0", " ").split())
        return text.strip(" \t-–—|:;,·•*_\"'")

    def check(self, source: str, raw: str) -> CleanText | str:
        """A CleanText, or the reject reason."""
        cfg = self.cfg
        if source not in cfg.sources:
            return "source_disabled"
        text = self.normalise(raw)
        if not text:
            return "empty"
        if _FILENAME.search(text):
            return "filename_like"
        for p in self.spam:
            if p.search(text):
                return "spam"
        for p in self.boilerplate:
            if p.search(text):
                return "boilerplate"
        words = _WORD.findall(text)
        if any(w.lower() in self.banned for w in words):
            return "banned_word"
        if len(words) < cfg.min_words or len(text) < cfg.min_chars:
            return "too_short"
        if len(words) > cfg.max_words or len(text) > cfg.max_chars:
            return "too_long"
        ratio = oov_ratio(words, cfg.min_zipf_frequency)
        if ratio > cfg.max_oov_ratio:
            return "high_oov"
        return CleanText(source, text, len(words), ratio)
