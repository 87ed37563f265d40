"""Query -> text pairs grouped by a shared trait: deduplication and same-group hard negatives.

Several sources pair a short text with a longer one (a package summary with its
description, a question with its answer) and draw the hard negative from the same group
(the same Debian section, the same FAQ file): :func:`grouped_examples` does both for them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from data.formats import TrainingExample
from data.sources.text import normalized


@dataclass(frozen=True)
class GroupedPair:
    """A query, its positive, the group its hard negative comes from, and its unit.

    The negative never comes from a pair of the same ``unit`` (sibling packages of one
    source package); ``None`` makes each pair its own unit.
    """

    query: str
    positive: str
    group: str
    unit: str | None = None


def grouped_examples(pairs: Iterable[GroupedPair], instruction: str, dataset: str) -> list[TrainingExample]:
    """One example per pair, its hard negative another positive of its group from another unit.

    Pairs whose query equals their positive, or whose query or positive repeats an
    earlier pair's (after normalisation), are dropped first (the first wins), so no
    negative equals its positive and no two queries share a text. The negative is the first pair of another unit found walking the group from a
    position seeded by the query; pairs whose group has no other unit are dropped.
    """
    seen: set[str] = set()
    members: dict[str, list[GroupedPair]] = {}
    kept: list[GroupedPair] = []
    for pair in pairs:
        query, positive = normalized(pair.query), normalized(pair.positive)
        keys = {"q:" + query, "p:" + positive}
        if query == positive or keys & seen:
            continue
        seen |= keys
        kept.append(pair)
        members.setdefault(pair.group, []).append(pair)
    examples = []
    for pair in kept:
        group = members[pair.group]
        unit = pair.unit if pair.unit is not None else pair.positive
        start = random.Random(f"{dataset}:{pair.query}").randrange(len(group))
        for step in range(len(group)):
            candidate = group[(start + step) % len(group)]
            if (candidate.unit if candidate.unit is not None else candidate.positive) != unit:
                examples.append(TrainingExample(pair.query, pair.positive, (candidate.positive,), instruction, dataset))
                break
    return examples
