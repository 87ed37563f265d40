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


@pytest.mark.parametrize(
    "batch_size, max_tokens, expected",
    [
        (3, 10, [[1], [2, 3], [0, 4]]),  # 5+5 = 10 fits; 3+1 = 4
        (None, 13, [[1], [2, 3, 0], [4]]),  # no count cap: 10+5 > 13; 5+5+3 = 13 fits; +1 does not
        (None, None, [[1, 2, 3, 0, 4]]),  # no caps: one batch, longest first
        (2, 8, [[1], [2], [3, 0], [4]]),  # 5+3 = 8 fits; 5+5 = 10 does not
    ],
)
def test_packed_batches_by_hand(batch_size, max_tokens, expected):
    """Packed, a batch's tokens are the sum of its lengths: no padding is counted."""
    lengths = [3, 10, 5, 5, 1]
    assert length_sorted_batches(lengths, batch_size, max_tokens, packed=True) == expected


@pytest.mark.parametrize("batch_size, max_tokens, name", [(0, None, "batch_size"), (2, 0, "max_tokens"),
                                                          (2, 1.5, "max_tokens")])
def test_bad_batch_size_or_budget_is_bad_input(tiny_model_dir, batch_size, max_tokens, name):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32")
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        encoder.encode(TEXTS, batch_size=batch_size, max_tokens=max_tokens)


@pytest.mark.parametrize("packing", [True, False])
def test_budgeted_batches_respect_the_budget_and_give_the_same_vectors(tiny_model_dir, packing):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32", packing=packing)
    alone = encoder.encode(TEXTS, batch_size=1)
    default = encoder.encode(TEXTS)

    batches = []  # (prompts, tokens computed, longest prompt) per forward
    embed = encoder.embed

    def recording_embed(batch):
        if packing:
            lengths = (batch["cu_seq_lens"][1:] - batch["cu_seq_lens"][:-1]).tolist()
            batches.append((len(lengths), batch["input_ids"].numel(), max(lengths)))
        else:
            rows, width = batch["input_ids"].shape
            batches.append((rows, rows * width, width))
        return embed(batch)

    encoder.embed = recording_embed
    batch_size, max_tokens = 4, 150
    budgeted = encoder.encode(TEXTS, batch_size=batch_size, max_tokens=max_tokens)

    np.testing.assert_allclose(budgeted, alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(budgeted, default, atol=1e-6, rtol=0)
    assert sum(prompts for prompts, _, _ in batches) == len(TEXTS)
    for prompts, tokens, _ in batches:
        assert prompts <= batch_size and (tokens <= max_tokens or prompts == 1), batches
    # The texts exercise both sides of the rule: a prompt over budget alone, and batches of several.
    assert any(longest > max_tokens for _, _, longest in batches)
    assert any(prompts > 1 for prompts, _, _ in batches)
