"""Contrastive batches drawn from one dataset at a time, in a seeded, resumable order.

The paper draws every batch from a single dataset so in-batch negatives are of the same
kind as the positives (a web query is never contrasted with a Bible verse). A batch here
is one contrastive batch, all processes together (``train.batch_size`` queries; an
optimizer step may accumulate several, which is what ``global_batch`` counts in
train/finetune.py); :func:`shard` cuts each process's part out of it.

Iteration is per epoch: ``iter(sampler)`` yields the batches left in the current epoch,
then moves the sampler to the next epoch, so ``for batch in sampler`` runs one epoch and
the training loop iterates again until it reaches ``max_steps``. The position (epoch,
batches handed out) counts batches as the iterator yields them, so drive the sampler
directly or through a ``DataLoader`` with ``num_workers=0``: worker prefetching would run
the count ahead of the optimizer steps actually taken.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from echo_base import BadInputError


class SingleDatasetBatchSampler:
    """Yield lists of example indices; each list is one contrastive batch from a single dataset.

    ``batch_size`` is the number of queries per contrastive batch, all processes together.
    Per epoch, each dataset's indices are shuffled and cut into batches of ``batch_size``
    (the incomplete tail batch of each dataset is dropped), then the batches of all
    datasets are shuffled together. Epoch ``e`` uses ``random.Random(seed + e)``, so the
    order depends only on the seed, the epoch and ``dataset_of_example``.
    """

    def __init__(self, dataset_of_example: Sequence[str], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
        if not dataset_of_example:
            raise BadInputError("dataset_of_example is empty: there is nothing to sample")
        self.batch_size = batch_size
        self.seed = seed
        self.num_examples = len(dataset_of_example)
        self._indices_of_dataset: dict[str, list[int]] = {}
        for index, dataset in enumerate(dataset_of_example):
            self._indices_of_dataset.setdefault(dataset, []).append(index)
        too_small = {name: len(ids) for name, ids in self._indices_of_dataset.items() if len(ids) < batch_size}
        if too_small:
            listed = ", ".join(f"{name!r} has {count}" for name, count in sorted(too_small.items()))
            raise BadInputError(
                f"every dataset needs at least batch_size={batch_size} examples for one batch: {listed}; "
                "lower the batch size or drop these datasets"
            )
        self.epoch = 0
        self.batches_consumed = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(len(ids) // self.batch_size for ids in self._indices_of_dataset.values())

    def batches_of_epoch(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order (independent of the current position)."""
        rng = random.Random(self.seed + epoch)
        batches: list[list[int]] = []
        # Sorted dataset names: the order must not depend on which dataset came first in the input.
        for name in sorted(self._indices_of_dataset):
            shuffled = list(self._indices_of_dataset[name])
            rng.shuffle(shuffled)
            full = len(shuffled) - len(shuffled) % self.batch_size
            batches.extend(shuffled[start : start + self.batch_size] for start in range(0, full, self.batch_size))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches_of_epoch(self.epoch)
        while self.batches_consumed < len(batches):
            batch = batches[self.batches_consumed]
            self.batches_consumed += 1
            yield batch
        self.epoch += 1
        self.batches_consumed = 0

    def state_dict(self) -> dict[str, Any]:
        """The position (plus what must match on resume) as plain ints, for a checkpoint."""
        return {
            "epoch": self.epoch,
            "batches_consumed": self.batches_consumed,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; the next ``iter`` resumes there.

        Raises ``ValueError`` when the state was saved for another seed, batch size or
        number of examples (resuming would silently give different batches), or when the
        position lies outside the epoch.
        """
        if "global_batch" in state and "batch_size" not in state:
            # Checkpoints written before the rename call batch_size "global_batch"; accepted
            # for one release, then this branch goes.
            state = {**state, "batch_size": state["global_batch"]}
        for key in ("seed", "batch_size", "num_examples"):
            if state.get(key) != getattr(self, key):
                raise BadInputError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {getattr(self, key)!r}; "
                    "resume with the same data and batch settings"
                )
        epoch, consumed = state.get("epoch"), state.get("batches_consumed")
        if not isinstance(epoch, int) or epoch < 0:
            raise BadInputError(f"sampler state 'epoch' must be an int >= 0, got {epoch!r}")
        if not isinstance(consumed, int) or not 0 <= consumed <= len(self):
            raise BadInputError(f"sampler state 'batches_consumed' must be an int in [0, {len(self)}], got {consumed!r}")
        self.epoch, self.batches_consumed = epoch, consumed


def shard(batch_indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The contiguous slice of a batch (all processes together) that ``rank`` of ``world_size`` processes.

    Raises ``ValueError`` if the batch does not divide evenly by ``world_size`` (the
    contrastive loss assumes equal local batches) or if ``rank`` is out of range.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise BadInputError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(batch_indices) % world_size:
        raise BadInputError(
            f"batch of {len(batch_indices)} does not divide by world_size={world_size}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    local_batch = len(batch_indices) // world_size
    return list(batch_indices[rank * local_batch : (rank + 1) * local_batch])
