"""SingleDatasetBatchSampler: one dataset per batch, determinism, exact resume, and sharding."""

from __future__ import annotations

import itertools
import random

import pytest

from data.sampler import SingleDatasetBatchSampler, shard

# 10 "a", 7 "b", 4 "c" interleaved: with batch size 3 -> 3 + 2 + 1 = 6 batches per epoch.
DATASETS = ["a", "b", "c", "a", "a", "b", "a", "c", "a", "b", "a", "b", "a", "c", "a", "b", "a", "b", "c", "b", "a"]


def test_every_batch_is_one_dataset_and_tails_are_dropped() -> None:
    sampler = SingleDatasetBatchSampler(DATASETS, batch_size=3, seed=0)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 6
    for batch in batches:
        assert len(batch) == 3
        assert len({DATASETS[i] for i in batch}) == 1
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))  # no example twice within an epoch
    per_dataset = {name: sum(DATASETS[b[0]] == name for b in batches) for name in "abc"}
    assert per_dataset == {"a": 3, "b": 2, "c": 1}


def test_order_is_deterministic_in_seed_and_epochs_reshuffle() -> None:
    first = SingleDatasetBatchSampler(DATASETS, 3, seed=7)
    second = SingleDatasetBatchSampler(DATASETS, 3, seed=7)
    assert list(first) == list(second)
    assert first.epoch == 1
    epoch1 = list(first)
    assert epoch1 == first.batches_of_epoch(1) == SingleDatasetBatchSampler(DATASETS, 3, seed=8).batches_of_epoch(0)
    assert epoch1 != first.batches_of_epoch(0)
    assert SingleDatasetBatchSampler(DATASETS, 3, seed=9).batches_of_epoch(0) != first.batches_of_epoch(0)


def _documented_order(seed: int, epochs: int, batch_size: int = 3) -> list[list[int]]:
    """The order SingleDatasetBatchSampler's docstring promises, written out independently of it.

    Epoch e: random.Random(seed + e) shuffles each dataset's indices (datasets by sorted
    name), cuts them into batches dropping the tail, then shuffles all batches together.
    """
    order: list[list[int]] = []
    for epoch in range(epochs):
        rng = random.Random(seed + epoch)
        batches: list[list[int]] = []
        for name in sorted(set(DATASETS)):
            indices = [index for index, dataset in enumerate(DATASETS) if dataset == name]
            rng.shuffle(indices)
            full = len(indices) - len(indices) % batch_size
            batches += [indices[start : start + batch_size] for start in range(0, full, batch_size)]
        rng.shuffle(batches)
        order += batches
    return order


def _take(sampler: SingleDatasetBatchSampler, count: int) -> list[list[int]]:
    """The next ``count`` batches, across epochs, like the training loop: each ``iter`` re-enters the sampler."""
    taken: list[list[int]] = []
    while len(taken) < count:
        taken += itertools.islice(iter(sampler), count - len(taken))  # the iterator is dropped here
    return taken


def test_uninterrupted_order_is_the_documented_one() -> None:
    sampler = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    assert [batch for _ in range(3) for batch in sampler] == _documented_order(seed=3, epochs=3)


@pytest.mark.parametrize("stop", [1, 4, 6, 10])  # 6: exactly one epoch, which the dropped iterator never closed
def test_reentering_continues_where_the_dropped_iterator_stopped(stop: int) -> None:
    expected = _documented_order(seed=3, epochs=3)
    sampler = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    taken = _take(sampler, stop)
    assert taken == expected[:stop]
    following = next(iter(sampler), None)  # re-enter with a new iterator
    if stop % len(sampler):
        assert following == expected[stop]
        taken.append(following)
    else:
        assert following is None  # the first re-entry after an epoch's last batch only closes that epoch
    assert taken + _take(sampler, len(expected) - len(taken)) == expected


@pytest.mark.parametrize("stop, position", [(4, (0, 4)), (6, (0, 6)), (10, (1, 4))])
def test_resume_equals_uninterrupted_run(stop: int, position: tuple[int, int]) -> None:
    first_run = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    taken = _take(first_run, stop)  # stop like max_steps would, mid-epoch or at an epoch's end
    state = first_run.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == position

    resumed = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    resumed.load_state_dict(state)
    assert taken + _take(resumed, 18 - stop) == _documented_order(seed=3, epochs=3)


def test_resume_rejects_a_state_for_other_settings() -> None:
    state = SingleDatasetBatchSampler(DATASETS, 3, seed=3).state_dict()
    with pytest.raises(ValueError, match="seed=3 but this sampler has 4"):
        SingleDatasetBatchSampler(DATASETS, 3, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size=3 but this sampler has 4"):
        SingleDatasetBatchSampler(DATASETS, 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_consumed"):
        SingleDatasetBatchSampler(DATASETS, 3, seed=3).load_state_dict({**state, "batches_consumed": 7})


def test_resume_accepts_a_state_saved_with_the_old_key_global_batch() -> None:
    first_run = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    taken = _take(first_run, 4)
    state = first_run.state_dict()
    old_state = {("global_batch" if key == "batch_size" else key): value for key, value in state.items()}
    assert "batch_size" not in old_state and old_state["global_batch"] == 3

    resumed = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    resumed.load_state_dict(old_state)
    assert taken + _take(resumed, 8) == _documented_order(seed=3, epochs=2)
    with pytest.raises(ValueError, match="batch_size=3 but this sampler has 4"):
        SingleDatasetBatchSampler(DATASETS, 4, seed=3).load_state_dict(old_state)


def test_dataset_smaller_than_one_batch_is_named() -> None:
    with pytest.raises(ValueError, match=r"'c' has 4"):
        SingleDatasetBatchSampler(DATASETS, batch_size=5, seed=0)


def test_shard_gives_contiguous_equal_slices_that_cover_the_batch() -> None:
    batch = [11, 12, 13, 14, 15, 16]
    assert [shard(batch, rank, 3) for rank in range(3)] == [[11, 12], [13, 14], [15, 16]]
    assert shard(batch, 0, 1) == batch
    with pytest.raises(ValueError, match="does not divide by world_size=4"):
        shard(batch, 0, 4)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard(batch, 2, 2)
