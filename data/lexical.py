"""A model-free lexical ranker: hashed TF-IDF vectors, for mining negatives while a mix is built.

:func:`data.hard_negatives.mine_hard_negatives` ranks candidates with any ``encode``
callable. ``python -m data.mine`` passes an embedding model's; a training mix is built in the
data layer, which loads no model, so its mined datasets are ranked lexically instead, as
DPR's BM25 negatives are: the candidates that share the query's rarer words rank first.

A text's vector counts its lower-cased word unigrams and bigrams, each hashed (CRC-32: the
same on every machine and run, unlike Python's ``hash``) into ``dims`` buckets, weighted by
sublinear term frequency (1 + log tf) times the smoothed inverse document frequency that
:class:`LexicalEncoder` learns from a corpus, and L2-normalised, so a dot product is a cosine.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{first} {second}" for first, second in zip(words, words[1:])]


class LexicalEncoder:
    """An ``Encode`` callable (texts, kind, instructions -> L2-normalised rows) with IDF from ``corpus``.

    ``kind`` and the instructions are ignored: a query and a document with the same words get
    the same vector, which is what a lexical match means.
    """

    def __init__(self, corpus: Sequence[str], dims: int = 1 << 14) -> None:
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        self.dims = dims
        document_frequency: Counter[int] = Counter()
        for text in corpus:
            document_frequency.update({self._bucket(term) for term in _terms(text)})
        self.idf = np.full(dims, math.log(1 + len(corpus)) + 1, dtype=np.float32)  # unseen terms: the rarest weight
        for bucket, count in document_frequency.items():
            self.idf[bucket] = math.log((1 + len(corpus)) / (1 + count)) + 1

    def _bucket(self, term: str) -> int:
        return zlib.crc32(term.encode("utf-8")) % self.dims

    def __call__(self, texts: Sequence[str], kind: str = "document", instructions=None) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for bucket, count in Counter(self._bucket(term) for term in _terms(text)).items():
                vectors[row, bucket] = (1 + math.log(count)) * self.idf[bucket]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1)
