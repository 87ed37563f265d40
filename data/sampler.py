"""Global batches drawn from one dataset at a time, in a seeded, resumable order.

The paper draws every batch from a single dataset so in-batch negatives are of the same
kind as the positives (a web query is never contrasted with a Bible verse). A global
batch is the batch across all ranks; :func:`shard` cuts each rank's part out of it.

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


class SingleDatasetBatchSampler:
    """Yield lists of example indices; each list is one global batch from a single dataset.

    Per epoch, each dataset's indices are shuffled and cut into batches of ``global_batch``
    (the incomplete tail batch of each dataset is dropped), then the batches of all
    datasets are shuffled together. Epoch ``e`` uses ``random.Random(seed + e)``, so the
    order depends only on the seed, the epoch and ``dataset_of_example``.
    """

    def __init__(self, dataset_of_example: Sequence[str], global_batch: int, seed: int) -> None:
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        if not dataset_of_example:
            raise ValueError("dataset_of_example is empty: there is nothing to sample")
        self.global_batch = global_batch
        self.seed = seed
        self.num_examples = len(dataset_of_example)
        self._indices_of_dataset: dict[str, list[int]] = {}
        for index, dataset in enumerate(dataset_of_example):
            self._indices_of_dataset.setdefault(dataset, []).append(index)
        too_small = {name: len(ids) for name, ids in self._indices_of_dataset.items() if len(ids) < global_batch}
        if too_small:
            listed = ", ".join(f"{name!r} has {count}" for name, count in sorted(too_small.items()))
            raise ValueError(
                f"every dataset needs at least global_batch={global_batch} examples for one batch: {listed}; "
                "lower the global batch or drop these datasets"
            )
        self.epoch = 0
        self.batches_consumed = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(len(ids) // self.global_batch for ids in self._indices_of_dataset.values())

    def batches_of_epoch(self, epoch: int) -> list[list[int]]:
        """All global batches of ``epoch`` in order (independent of the current position)."""
        rng = random.Random(self.seed + epoch)
        batches: list[list[int]] = []
        # Sorted dataset names: the order must not depend on which dataset came first in the input.
        for name in sorted(self._indices_of_dataset):
            shuffled = list(self._indices_of_dataset[name])
            rng.shuffle(shuffled)
            full = len(shuffled) - len(shuffled) % self.global_batch
            batches.extend(shuffled[start : start + self.global_batch] for start in range(0, full, self.global_batch))
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
            "global_batch": self.global_batch,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; the next ``iter`` resumes there.

        Raises ``ValueError`` when the state was saved for another seed, global batch or
        number of examples (resuming would silently give different batches), or when the
        position lies outside the epoch.
        """
        for key in ("seed", "global_batch", "num_examples"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {getattr(self, key)!r}; "
                    "resume with the same data and batch settings"
                )
        epoch, consumed = state.get("epoch"), state.get("batches_consumed")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"sampler state 'epoch' must be an int >= 0, got {epoch!r}")
        if not isinstance(consumed, int) or not 0 <= consumed <= len(self):
            raise ValueError(f"sampler state 'batches_consumed' must be an int in [0, {len(self)}], got {consumed!r}")
        self.epoch, self.batches_consumed = epoch, consumed


def shard(global_batch_indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The contiguous slice of a global batch that ``rank`` of ``world_size`` processes.

    Raises ``ValueError`` if the global batch does not divide evenly by ``world_size`` (the
    contrastive loss assumes equal local batches) or if ``rank`` is out of range.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(global_batch_indices) % world_size:
        raise ValueError(
            f"global batch of {len(global_batch_indices)} does not divide by world_size={world_size}; "
            "choose a global batch that is a multiple of the number of processes"
        )
    local_batch = len(global_batch_indices) // world_size
    return list(global_batch_indices[rank * local_batch : (rank + 1) * local_batch])
