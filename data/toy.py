"""The toy S1/S2 diagnostic as an evaluation task folder of type ``toy``.

The triples of both structures (:mod:`data.sources.toy`) go through
:func:`data.formats.write_task` into ``triples.jsonl`` beside ``task.json``, the folder
that :func:`evaluation.tasks.evaluate_task` reads.
"""

from __future__ import annotations

from pathlib import Path

from data.formats import write_task
from data.sources import toy
from echo_base import atomic_folder, cache_dir


def write_toy_task(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """Write ``n`` triples per structure (seeded) as a ``toy`` task folder; returns the folder.

    Raises ValueError for an ``n`` outside 1 .. the number of distinct queries.
    """
    triples = [
        {"structure": t.structure, "query": t.query.text, "positive": t.positive.text, "negative": t.negative.text}
        for structure in toy.STRUCTURES
        for t in toy.generate_triples(structure, n, seed)
    ]
    meta = {
        "name": "toy",
        "type": "toy",
        "instruction": "",  # zero-shot: the templates of the paper's toy experiment take none
        "symmetric": True,
        "source": toy.SOURCE,
        "license": toy.LICENSE,
        "description": f"S1/S2 whole-sentence diagnostic of the echo paper, {n} triples per structure, seed {seed}",
    }
    write_task(Path(folder), meta, {"triples.jsonl": triples})
    return Path(folder)


def prepare_toy_task(n: int = 300, seed: int = 0) -> Path:
    """The toy task folder for (n, seed) under the cache root.

    Rewritten on every call rather than reused: it takes milliseconds, and a folder left by
    older paraphrase sets can never pass for the current ones.
    """
    target = cache_dir("toy") / f"n{n}-seed{seed}"
    with atomic_folder(target) as staging:
        write_toy_task(staging, n, seed)
    return target
