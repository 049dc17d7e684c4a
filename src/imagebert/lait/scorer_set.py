"""A labelled relevance set the repository regenerates: `imagebert lait make-scorer-set OUT`.

Rows are what the text filters let through on real pages, labelled by known rules: *related* descriptions name
what is in a picture (object, attribute, setting; 4-20 words, from alt text, Open Graph, titles or a figure
caption), *unrelated* ones are text that sits near images but does not describe them (page prose, bylines and
dates, navigation and calls to action, product codes, page titles, generic gallery labels). Both kinds come
from every HTML source with realistic priors (alt is mostly descriptive, surrounding text mostly not), so the
model learns text cues, not just the source. Images are plain pictures of random size and aspect, independent of
the label. The default scorer shipped in the package is `train-scorer` on this set (docs/lait.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

NOUNS = [
    "dog",
    "cat",
    "horse",
    "boat",
    "bridge",
    "house",
    "tree",
    "river",
    "lake",
    "mountain",
    "street",
    "market",
    "garden",
    "train",
    "car",
    "bicycle",
    "bird",
    "church",
    "castle",
    "beach",
    "forest",
    "field",
    "road",
    "tower",
    "lighthouse",
    "cabin",
    "flower",
    "kitchen",
    "table",
    "chair",
    "window",
    "door",
    "harbour",
    "village",
    "city",
    "park",
    "child",
    "woman",
    "man",
    "couple",
    "family",
    "crowd",
    "musician",
    "player",
    "chef",
    "farmer",
]
ADJ = [
    "small",
    "old",
    "red",
    "quiet",
    "busy",
    "tall",
    "green",
    "wooden",
    "stone",
    "bright",
    "dark",
    "white",
    "black",
    "yellow",
    "snowy",
    "sunny",
    "empty",
]
PLACES = [
    "on a calm lake",
    "in the old town",
    "at sunrise",
    "under grey clouds",
    "beside a brick wall",
    "in a green field",
    "on a rocky coast",
    "in the snow",
    "near the harbour",
    "at night",
    "in the rain",
    "on a wooden table",
    "in the morning light",
    "along the river",
    "in front of the station",
    "on the beach",
]
VERBS = [
    "standing",
    "sitting",
    "walking",
    "resting",
    "lying",
    "parked",
    "floating",
    "waiting",
    "playing",
    "running",
]

PROSE = (
    "We spent the whole weekend walking along the river and talking with people",
    "The weather was mild and every corner seemed to have a story worth telling",
    "In this article we look at the reasons behind the decision and what it means",
    "Our team has been working hard to bring you the best experience possible",
    "It was one of those days when nothing seemed to go according to plan",
    "Many readers asked us about the results so here is a short summary",
    "The committee will meet again next month to discuss the remaining questions",
    "If you have any questions about your account please contact our support team",
    "This is the third part of our series about living and working abroad",
    "Thanks to everyone who joined us last week and shared their stories",
)
UI = (
    "Read more about our services",
    "Posted by admin in news and updates",
    "Share this article with your friends",
    "Previous post and next post",
    "Sign up for our weekly newsletter",
    "Leave a comment below and tell us what you think",
    "Back to the main page",
    "Follow us on our social channels",
    "Related posts you might also like",
    "Continue reading the full story",
)
GENERIC = ("Photo gallery of the event", "Picture of the day", "Featured image for this post", "Header image")


def _related(rng: random.Random) -> str:
    n = rng.choice(NOUNS)
    a = rng.choice(ADJ)
    form = rng.randrange(4)
    if form == 0:
        return f"A {a} {n} {rng.choice(PLACES)}"
    if form == 1:
        return f"A {n} {rng.choice(VERBS)} {rng.choice(PLACES)}"
    if form == 2:
        return f"Two {n}s and a {a} {rng.choice(NOUNS)} {rng.choice(PLACES)}"
    return f"The {a} {n} {rng.choice(PLACES)}, seen from {rng.choice(['above', 'the bridge', 'a distance', 'the road'])}"


def _unrelated(rng: random.Random) -> str:
    form = rng.randrange(6)
    if form == 0:
        return rng.choice(PROSE)
    if form == 1:
        return rng.choice(UI)
    if form == 2:
        return f"Posted on {rng.randint(1, 28)} March {rng.randint(2005, 2024)} by {rng.choice(['admin', 'editor', 'staff'])}"
    if form == 3:
        return f"Model {rng.choice('ABCDXZ')}{rng.randint(100, 9999)} series {rng.randint(2010, 2024)} edition {rng.randint(1, 9)}"
    if form == 4:
        return f"{rng.choice(['Home', 'News', 'Blog', 'Shop'])} page {rng.randint(2, 40)} of {rng.randint(41, 300)}"
    return rng.choice(GENERIC)


# P(source | label): descriptions are mostly alt / og / figure captions; non-descriptions mostly surrounding prose
SOURCE_PRIORS = {
    1: (("alt", 0.5), ("og_description", 0.2), ("title", 0.15), ("surrounding", 0.15)),
    0: (("alt", 0.2), ("og_description", 0.15), ("title", 0.2), ("surrounding", 0.45)),
}


def write_scorer_set(folder: str | Path, rows: int = 1200, seed: int = 0) -> Path:
    """labels.jsonl (image, text, related, source) + a few images; deterministic in `seed`."""
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(24):
        w, h = rng.randint(310, 1600), rng.randint(310, 1200)
        name = f"images/{i:02d}.png"
        Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            folder / name
        )
        images.append(name)
    lines = []
    for _ in range(rows):
        related = int(rng.random() < 0.5)
        text = _related(rng) if related else _unrelated(rng)
        sources, weights = zip(*SOURCE_PRIORS[related])
        source = rng.choices(sources, weights)[0]
        lines.append(
            json.dumps({"image": rng.choice(images), "text": text, "related": related, "source": source})
        )
    labels = folder / "labels.jsonl"
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return labels
