"""Deterministic train / dev / test assignment by hashing a source's natural unit.

Hashing the unit (a synset, a Bible chapter, a Python module) rather than individual
rows keeps everything derived from one unit, including the hard negatives drawn from its
neighbours, on the same side of the split.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "dev", "test"]

# Percent of units per split: 80 / 10 / 10.
TRAIN_PERCENT = 80
DEV_PERCENT = 10


def split_of(source: str, unit: str) -> Split:
    """The split of ``unit`` in ``source``; stable across machines and Python versions."""
    digest = hashlib.sha256(f"{source}\0{unit}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < TRAIN_PERCENT:
        return "train"
    if bucket < TRAIN_PERCENT + DEV_PERCENT:
        return "dev"
    return "test"
