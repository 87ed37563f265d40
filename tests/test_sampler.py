"""SingleDatasetBatchSampler: one dataset per batch, determinism, exact resume, and sharding."""

from __future__ import annotations

import itertools

import pytest

from data.sampler import SingleDatasetBatchSampler, shard

# 10 "a", 7 "b", 4 "c" interleaved: with global batch 3 -> 3 + 2 + 1 = 6 batches per epoch.
DATASETS = ["a", "b", "c", "a", "a", "b", "a", "c", "a", "b", "a", "b", "a", "c", "a", "b", "a", "b", "c", "b", "a"]


def test_every_batch_is_one_dataset_and_tails_are_dropped() -> None:
    sampler = SingleDatasetBatchSampler(DATASETS, global_batch=3, seed=0)
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


def test_resume_mid_epoch_equals_uninterrupted_run() -> None:
    straight = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    uninterrupted = [batch for _ in range(3) for batch in straight]  # three full epochs

    first_run = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    taken = list(itertools.islice(iter(first_run), 4))  # stop mid-epoch, like max_steps would
    taken += list(itertools.islice(iter(first_run), 0))  # re-entering without taking changes nothing
    state = first_run.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (0, 4)

    resumed = SingleDatasetBatchSampler(DATASETS, 3, seed=3)
    resumed.load_state_dict(state)
    rest = [batch for _ in range(3) for batch in resumed]
    # The resumed run finishes epoch 0, then epochs 1 and 2; plus the 4 batches before the break.
    assert taken + rest[: len(uninterrupted) - 4] == uninterrupted


def test_resume_rejects_a_state_for_other_settings() -> None:
    state = SingleDatasetBatchSampler(DATASETS, 3, seed=3).state_dict()
    with pytest.raises(ValueError, match="seed=3 but this sampler has 4"):
        SingleDatasetBatchSampler(DATASETS, 3, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_consumed"):
        SingleDatasetBatchSampler(DATASETS, 3, seed=3).load_state_dict({**state, "batches_consumed": 7})


def test_dataset_smaller_than_one_batch_is_named() -> None:
    with pytest.raises(ValueError, match=r"'c' has 4"):
        SingleDatasetBatchSampler(DATASETS, global_batch=5, seed=0)


def test_shard_gives_contiguous_equal_slices_that_cover_the_batch() -> None:
    batch = [11, 12, 13, 14, 15, 16]
    assert [shard(batch, rank, 3) for rank in range(3)] == [[11, 12], [13, 14], [15, 16]]
    assert shard(batch, 0, 1) == batch
    with pytest.raises(ValueError, match="does not divide by world_size=4"):
        shard(batch, 0, 4)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard(batch, 2, 2)
