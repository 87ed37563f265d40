"""Hard-negative mining: negatives from a rank window of a model's ranking, likely false negatives dropped.

This module is model-free: the ranking comes from an ``encode`` callable (texts, kind,
instructions -> L2-normalised rows), so the data layer never imports a model.
``python -m data.mine`` (:mod:`data.mine`) is the command that loads one.

The rule, for each training example (query ``q``, positive ``p``):

1. **Candidates**: the pool (by default every positive and negative of the input file, else a
   corpus), less the texts known not to be negatives: ``q`` itself and every positive the
   file (or the known pairs given beside it) gives ``q`` (the same text exactly).
2. **Ranking**: by cosine ``s(q, c)``, ``q`` embedded as a query (with its instruction) and
   ``c`` as a document; rank 1 is the most similar candidate.
3. **Filter** (likely false negatives, on unless switched off): a candidate is dropped when
   - ``s(q, c) > s(q, p) - margin``: it scores within ``margin`` of the positive, or above it
     (NV-Retriever's "TopK-MarginPos", an absolute margin on the cosine; ``margin=None``
     switches this test off and keeps the two below);
   - it duplicates a positive of ``q``: the same :func:`normalized_text` (case, accents,
     punctuation and spacing aside);
   - it nearly duplicates one: character 3-gram Jaccard similarity of the normalised texts
     at least ``near_duplicate`` (:func:`near_duplicate_similarity`).
4. **Window**: the negatives are the first ``negatives`` candidates that survive the filter
   at ranks ``first_rank..last_rank`` (FlagEmbedding's range, hardest first: the order they
   are written in, so ``data.num_negatives=1`` takes the hardest). If fewer survive there,
   the ranks below ``last_rank`` fill the rest, filtered alike, until the pool runs out.

Ranks are positions in the ranking of step 2 whether or not the filter keeps a candidate,
so a run with the filter and one without it draw from the same window.

The margin test trusts the model's score of the positive. Under a weak ranker (a zero-shot
model whose positives often rank low) it drops every candidate scoring above a low-ranked
positive, and the negatives then come from far below the window (``MiningStats``
counts them): `python -m evaluation.mining` measures both effects on a planted set.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from data.formats import TrainingExample

# (texts, kind "query" or "document", one instruction per text or None) -> float rows, L2-normalised.
Encode = Callable[[list[str], str, list[str | None] | None], np.ndarray]

# Queries scored against the whole pool at once: a block's score matrix is this many rows x the pool.
_QUERY_BLOCK = 256
_NOT_A_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class MiningRule:
    """Where negatives come from and which candidates count as likely false negatives (module docstring)."""

    first_rank: int = 10
    last_rank: int = 100
    negatives: int = 7
    # A cosine margin below the positive's score: at 0.05, NV-Retriever's TopK-MarginPos setting; None: no score test.
    margin: float | None = 0.05
    # Character 3-gram Jaccard at or above which a candidate nearly duplicates a positive.
    near_duplicate: float = 0.8
    filter_false_negatives: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.first_rank <= self.last_rank:
            raise ValueError(f"ranks must satisfy 1 <= first <= last, got {self.first_rank}:{self.last_rank}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0 < self.near_duplicate <= 1:
            raise ValueError(f"near_duplicate must lie in (0, 1], got {self.near_duplicate}")


@dataclass
class MiningStats:
    """What a mining run did, summed over its examples."""

    examples: int = 0
    negatives: int = 0  # written
    short_rows: int = 0  # examples given fewer than rule.negatives (the pool ran out)
    from_below_window: int = 0  # negatives taken past last_rank to fill a row
    dropped: dict[str, int] = field(default_factory=lambda: {"score": 0, "duplicate": 0, "near_duplicate": 0})

    def summary(self) -> str:
        """One line for the command's report."""
        dropped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in self.dropped.items())
        return (f"{self.examples} examples, {self.negatives} negatives ({self.from_below_window} from below the window), "
                f"{self.short_rows} rows short of negatives; dropped as likely false negatives: {dropped}")


def normalized_text(text: str) -> str:
    """The text compared for duplicates: NFKC, case-folded, accents removed, only letters and digits, single spaces."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    bare = "".join(character for character in decomposed if not unicodedata.combining(character))
    return " ".join(_NOT_A_WORD.sub(" ", bare).split())


# Every candidate is compared with its query's positives, and a text is a candidate of many queries.
_normalized = lru_cache(maxsize=1 << 16)(normalized_text)


@lru_cache(maxsize=1 << 16)
def _trigrams(text: str) -> frozenset[str]:
    padded = f" {_normalized(text)} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def near_duplicate_similarity(first: str, second: str) -> float:
    """Jaccard similarity of the character 3-gram sets of the two normalised texts (each padded by a space)."""
    a, b = _trigrams(first), _trigrams(second)
    return len(a & b) / len(a | b) if a | b else 1.0


def mine_hard_negatives(
    examples: Sequence[TrainingExample],
    encode: Encode,
    rule: MiningRule,
    corpus: Sequence[str] | None = None,
    known_pairs: Sequence[TrainingExample] = (),
) -> tuple[list[TrainingExample], MiningStats]:
    """Replace each example's negatives with mined ones (module docstring); returns them and what was done.

    ``corpus`` is the candidate pool; None pools every positive and negative of ``examples``.
    ``known_pairs`` are further rows whose positives count as positives of their query (the rest
    of a split that ``examples`` were sampled from, when ``corpus`` holds its texts): they are
    never offered to that query as negatives, and the duplicate tests compare against them.
    Examples keep their order, query, positive, instruction and dataset.
    """
    pool = list(dict.fromkeys(corpus if corpus is not None else
                              [text for example in examples for text in (example.positive, *example.negatives)]))
    # Positives outside the pool are embedded too (for their scores), but never offered as negatives.
    in_pool = set(pool)
    texts = pool + [text for text in dict.fromkeys(example.positive for example in examples) if text not in in_pool]
    index_of = {text: index for index, text in enumerate(texts)}
    positives_of: dict[str, set[str]] = {}
    for example in (*examples, *known_pairs):
        positives_of.setdefault(example.query, set()).add(example.positive)

    query_keys = list(dict.fromkeys((example.query, example.instruction) for example in examples))
    query_row = {key: row for row, key in enumerate(query_keys)}
    query_vectors = encode([query for query, _ in query_keys], "query", [instruction for _, instruction in query_keys])
    candidate_vectors = encode(texts, "document", None)

    stats = MiningStats(examples=len(examples))
    mined = []
    for start in range(0, len(examples), _QUERY_BLOCK):
        block = examples[start : start + _QUERY_BLOCK]
        scores = query_vectors[[query_row[(example.query, example.instruction)] for example in block]] @ candidate_vectors.T
        for example, row in zip(block, scores):
            positives = positives_of[example.query]
            excluded = {index_of[text] for text in (*positives, example.query) if text in index_of}
            negatives = _select(positives, row[: len(pool)], float(row[index_of[example.positive]]), pool, excluded,
                                rule, stats)
            mined.append(replace(example, negatives=tuple(negatives)))
    return mined, stats


def _select(positives: set[str], scores: np.ndarray, positive_score: float, pool: Sequence[str], excluded: set[int],
            rule: MiningRule, stats: MiningStats) -> list[str]:
    """One example's negatives: the first survivors of the filter from its rank window, then below it."""
    chosen: list[str] = []
    rank = 0
    for index in _descending(scores, rule.last_rank + len(excluded) + 4 * rule.negatives):
        if index in excluded:
            continue
        rank += 1
        if rank < rule.first_rank:
            continue
        reason = _false_negative_reason(pool[index], float(scores[index]), positives, positive_score, rule)
        if reason is not None:
            stats.dropped[reason] += 1
            continue
        chosen.append(pool[index])
        stats.from_below_window += rank > rule.last_rank
        if len(chosen) == rule.negatives:
            break
    stats.negatives += len(chosen)
    stats.short_rows += len(chosen) < rule.negatives
    return chosen


def _false_negative_reason(candidate: str, score: float, positives: set[str], positive_score: float,
                           rule: MiningRule) -> str | None:
    """Why ``candidate`` is likely a false negative ("score", "duplicate", "near_duplicate"), or None."""
    if not rule.filter_false_negatives:
        return None
    if rule.margin is not None and score > positive_score - rule.margin:
        return "score"
    if any(_normalized(candidate) == _normalized(positive) for positive in positives):
        return "duplicate"
    if any(near_duplicate_similarity(candidate, positive) >= rule.near_duplicate for positive in positives):
        return "near_duplicate"
    return None


def _descending(scores: np.ndarray, head: int) -> Iterator[int]:
    """Indices of ``scores`` from highest to lowest (ties by index): the top ``head`` sorted first, the rest on demand."""
    if head < len(scores):
        top = np.argpartition(-scores, head)[:head]
        top = top[np.lexsort((top, -scores[top]))]
        yield from top.tolist()
        rest = np.setdiff1d(np.arange(len(scores)), top)
        yield from rest[np.lexsort((rest, -scores[rest]))].tolist()
    else:
        yield from np.lexsort((np.arange(len(scores)), -scores)).tolist()
