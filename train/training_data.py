"""The training data of a run: every example read once, and this process's contrastive batches.

:func:`load_training_data` reads the prepared mix and the config's explicit datasets (a
malformed row stops the run here, before a model loads). :class:`ContrastiveBatches`
turns the sampler's contrastive batches (all processes together, one dataset each) into this process's shard,
collated into prompts.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from data.formats import TrainingExample, read_examples
from data.prepare import prepare_training_mix
from data.sampler import SingleDatasetBatchSampler, shard
from train.collate import ContrastiveBatch, Tokenize, collate_examples
from train.config import DataConfig, DatasetSpec


@dataclass(frozen=True)
class TrainingData:
    """All training examples, which datasets are symmetric, the dev task folder (if any),
    where each dataset came from: (dataset, source, licence) rows for the model card, and
    which file each example was read from: (index of its first example, path) per file."""

    examples: list[TrainingExample]
    symmetric_datasets: frozenset[str]
    dev: Path | None
    sources: tuple[tuple[str, str, str], ...]
    files: tuple[tuple[int, str], ...] = ()

    def describe_rows(self, rows: Sequence[int]) -> str:
        """Where the examples ``rows`` (indices into ``examples``) came from: their dataset, file and line numbers."""
        starts = [start for start, _ in self.files]
        lines_by_file: dict[str, set[int]] = {}
        for row in rows:
            path = self.files[bisect_right(starts, row) - 1][1] if self.files else "?"
            lines_by_file.setdefault(path, set()).add(self.examples[row].line)
        datasets = sorted({self.examples[row].dataset for row in rows})
        places = "; ".join(f"{path} lines {', '.join(map(str, sorted(lines)))}" for path, lines in lines_by_file.items())
        return f"dataset {', '.join(datasets)}: {places}"


def load_training_data(config: DataConfig) -> TrainingData:
    """Read every dataset of the mix and of ``config.datasets``; raises DataFormatError on a bad row."""
    specs, dev, recorded = [], None, {}
    if config.mix is not None:
        mix = prepare_training_mix(config.mix)
        specs += [DatasetSpec(name=file.stem, path=str(file)) for file in sorted((mix / "train").glob("*.jsonl"))]
        dev = mix / "dev" if config.dev == "auto" else None
        recorded = json.loads((mix / "manifest.json").read_text(encoding="utf-8"))["sources"]
    specs += config.datasets
    if config.dev not in (None, "auto"):
        dev = Path(config.dev)
    examples: list[TrainingExample] = []
    files: list[tuple[int, str]] = []
    for spec in specs:
        rows = read_examples(spec.path, spec.format, dataset=spec.name, instruction=spec.instruction,
                             num_negatives=config.num_negatives)
        files.append((len(examples), spec.path))
        examples += rows[: spec.max_examples]
    sources = tuple((spec.name, recorded[spec.name]["source"], recorded[spec.name]["license"]) if spec.name in recorded
                    else (spec.name, spec.path, "not recorded") for spec in specs)
    return TrainingData(examples, frozenset(spec.name for spec in specs if spec.symmetric), dev, sources, tuple(files))


class ContrastiveBatches:
    """Endless: each call of :meth:`next_step` returns this process's batches for one optimizer step.

    The sampler keeps the position (a checkpoint saves it), so a resumed run continues
    with the very batch it would have drawn next.
    """

    def __init__(self, data: TrainingData, sampler: SingleDatasetBatchSampler, tokenize: Tokenize,
                 num_negatives: int, rank: int, world_size: int) -> None:
        self.data = data
        self.sampler = sampler
        self.tokenize = tokenize
        self.num_negatives = num_negatives
        self.rank, self.world_size = rank, world_size
        self._global_batches = self._endless()

    def next_step(self, micro_batches: int) -> list[ContrastiveBatch]:
        return [self._next() for _ in range(micro_batches)]

    def _next(self) -> ContrastiveBatch:
        rows = next(self._global_batches)
        examples = [self.data.examples[i] for i in shard(rows, self.rank, self.world_size)]
        symmetric = examples[0].dataset in self.data.symmetric_datasets
        return replace(collate_examples(examples, self.tokenize, self.num_negatives, symmetric), rows=tuple(rows))

    def _endless(self) -> Iterator[list[int]]:
        while True:  # one epoch per pass; the sampler moves itself to the next epoch
            yield from self.sampler
