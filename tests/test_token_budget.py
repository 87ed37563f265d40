"""Token-budget batching: the rule by hand, and EchoEncoder.encode under a budget gives the vectors of any other batching."""

from __future__ import annotations

import numpy as np
import pytest

from models import EchoEncoder
from models.encoder import length_sorted_batches

# Prompts from 32 to 256 tokens (the longest is cut at the tiny model's 256 positions).
TEXTS = ["cats", "a sleepy hound", "where do birds fly in winter?",
         " ".join(["the quick brown fox jumps over the lazy dog"] * 6),
         "Many birds migrate south in the winter to find food and warmth.", "dogs",
         " ".join(["rivers, mountains and the sea"] * 3), "hello world"]


@pytest.mark.parametrize(
    "batch_size, max_tokens, expected",
    [
        (2, None, [[1, 2], [3, 0], [4]]),  # no budget: runs of batch_size, longest first, ties in input order
        (3, 10, [[1], [2, 3], [0, 4]]),  # 10 tokens: one 10-token item, two 5s, then batch_size caps 3 and 1
        (3, 8, [[1], [2], [3], [0, 4]]),  # 8 tokens: the 10-token item still goes alone; 5+5 padded = 10 > 8
    ],
)
def test_batches_by_hand(batch_size, max_tokens, expected):
    lengths = [3, 10, 5, 5, 1]
    assert length_sorted_batches(lengths, batch_size, max_tokens) == expected


@pytest.mark.parametrize("batch_size, max_tokens, name", [(0, None, "batch_size"), (2, 0, "max_tokens"),
                                                          (2, 1.5, "max_tokens")])
def test_bad_batch_size_or_budget_is_bad_input(tiny_model_dir, batch_size, max_tokens, name):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32")
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        encoder.encode(TEXTS, batch_size=batch_size, max_tokens=max_tokens)


def test_budgeted_batches_respect_the_budget_and_give_the_same_vectors(tiny_model_dir):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32")
    alone = encoder.encode(TEXTS, batch_size=1)
    default = encoder.encode(TEXTS)

    batch_shapes = []
    embed = encoder.embed

    def recording_embed(batch):
        batch_shapes.append(tuple(batch["input_ids"].shape))
        return embed(batch)

    encoder.embed = recording_embed
    batch_size, max_tokens = 4, 150
    budgeted = encoder.encode(TEXTS, batch_size=batch_size, max_tokens=max_tokens)

    np.testing.assert_allclose(budgeted, alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(budgeted, default, atol=1e-6, rtol=0)
    assert sum(rows for rows, _ in batch_shapes) == len(TEXTS)
    for rows, width in batch_shapes:
        assert rows <= batch_size and (rows * width <= max_tokens or rows == 1), batch_shapes
    # The texts exercise both sides of the rule: a prompt over budget alone, and batches of several.
    assert any(width > max_tokens for _, width in batch_shapes)
    assert any(rows > 1 for rows, _ in batch_shapes)
