"""EchoEncoder: pooling under either padding side, alone-vs-batch parity, the promised errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models import EchoEncoder
from models.encoder import DEFAULT_MAX_LENGTH
from models.pooling import pool
from models.tokenization import pad_prompts

TEXTS = ["where do birds fly in winter?", "the quick brown fox jumps over the lazy dog and the river", "cats", "a sleepy hound"]


def test_pool_matches_hand_computed_mean_and_last():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [5.0, 0.0], [9.0, 9.0]]])
    attention = torch.tensor([[1, 1, 1, 0]])
    pooled_mask = torch.tensor([[0, 1, 1, 0]])
    # mean of [3,4] and [5,0] = [4,2] -> normalized [2,1]/sqrt(5); last real token = [5,0] -> [1,0]
    torch.testing.assert_close(pool(hidden, pooled_mask, attention, "mean"), torch.tensor([[2.0, 1.0]]) / 5**0.5)
    torch.testing.assert_close(pool(hidden, pooled_mask, attention, "last"), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="pooling must be"):
        pool(hidden, pooled_mask, attention, "max")


@pytest.mark.parametrize("mode", ["echo", "classical", "prompteol"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_left_and_right_padding_give_the_same_embeddings(tiny_model_dir, mode, pooling):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode=mode, pooling=pooling, dtype="float32")
    prompts = encoder.tokenize(TEXTS, "document")
    with torch.no_grad():
        right = encoder.embed(pad_prompts(prompts, encoder.pad_id, "right"))
        left = encoder.embed(pad_prompts(prompts, encoder.pad_id, "left"))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "tiny_sentencepiece_model_dir"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_a_text_alone_equals_the_text_in_a_batch(request, model_fixture, pooling):
    encoder = EchoEncoder.from_pretrained(str(request.getfixturevalue(model_fixture)), pooling=pooling, dtype="float32")
    batched = encoder.encode(TEXTS, kind="query", batch_size=3)
    alone = np.stack([encoder.encode([text], kind="query")[0] for text in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), encoder.model.config.hidden_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_last_pooling_pools_the_appended_eos(tiny_model_dir):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), pooling="last", dtype="float32")
    prompt = encoder.tokenize(["cats"], "query")[0]
    assert prompt.input_ids[-1] == encoder.tokenizer.eos_token_id and prompt.pooled_mask[-1] == 1
    batch = encoder.collate([prompt])
    with torch.no_grad():
        hidden = encoder.model(input_ids=batch["input_ids"]).last_hidden_state[0, -1]
    np.testing.assert_allclose(encoder.encode(["cats"])[0], (hidden / hidden.norm()).numpy(), atol=1e-5)


def test_echo_pools_only_the_second_copy(tiny_model_dir):
    """Mean over the pooled mask equals a mean computed by hand over the second copy's positions."""
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo", pooling="mean", dtype="float32")
    prompt = encoder.tokenize([TEXTS[1]], "document")[0]
    second_copy = [i for i, pooled in enumerate(prompt.pooled_mask) if pooled]
    assert second_copy[0] > len(prompt) // 2  # the first copy and the instruction come before
    with torch.no_grad():
        hidden = encoder.model(input_ids=torch.tensor([prompt.input_ids])).last_hidden_state[0]
    expected = hidden[second_copy].mean(0)
    np.testing.assert_allclose(encoder.encode([TEXTS[1]], kind="document")[0], (expected / expected.norm()).numpy(), atol=1e-5)


def test_mode_and_pooling_default_to_the_folders_echo_config(tiny_model_dir, tmp_path):
    base = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="classical_instruct", pooling="last", max_length=64)
    folder = tmp_path / "export"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    (folder / "echo_config.json").write_text(json.dumps(base.echo_config()))
    reloaded = EchoEncoder.from_pretrained(str(folder))
    assert (reloaded.mode, reloaded.pooling, reloaded.max_length) == ("classical_instruct", "last", 64)
    assert EchoEncoder.from_pretrained(str(tiny_model_dir)).mode == "echo"
    assert EchoEncoder.from_pretrained(str(folder), mode="echo", pooling="mean").pooling == "mean"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.encode([]), "texts is empty"),
        (lambda e: e.encode(["ok", 3]), r"texts\[1\] is int"),
        (lambda e: e.encode("a single string"), "must be a list of strings"),
        (lambda e: e.encode(["ok", "  "]), r"texts\[1\] is empty"),
        (lambda e: e.encode(["ok"], kind="passage"), "kind must be 'query' or 'document'"),
        (lambda e: e.encode(["ok"], batch_size=0), "batch_size must be a positive integer"),
        (lambda e: e.encode(["ok"], dim=0), "dim must be a positive integer"),
        (lambda e: e.encode(["ok"], dim=33), "dim=33 exceeds the embedding width 32"),
    ],
)
def test_bad_arguments_raise_value_errors(tiny_model_dir, call, message):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ValueError, match=message):
        call(encoder)


def test_bad_constructor_arguments_raise_value_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown template set 'echoo'"):
        EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echoo")
    with pytest.raises(ValueError, match="pooling must be"):
        EchoEncoder.from_pretrained(str(tiny_model_dir), pooling="max")
    with pytest.raises(ValueError, match="dtype must be one of"):
        EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="fp8")
    with pytest.raises(ValueError, match=r"matryoshka_dims \[8, 64\] must be widths in 1..32"):
        EchoEncoder.from_pretrained(str(tiny_model_dir), matryoshka_dims=[8, 64])


def test_from_pretrained_loads_no_lm_head_and_caps_prompts_by_default(tiny_model_dir, tmp_path):
    """The folder holds a causal LM; the encoder loads the base model alone, and a newcomer's encode
    is capped at DEFAULT_MAX_LENGTH prompt tokens, or at the model's limit when that is lower."""
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir))
    assert not any("lm_head" in name for name, _ in encoder.model.named_modules())
    assert encoder.model.get_output_embeddings() is None
    assert encoder.model.config.max_position_embeddings == 256 < DEFAULT_MAX_LENGTH
    assert encoder.max_length == 256
    (prompt,) = encoder.tokenize([" ".join(["word"] * 2000)], "document")
    assert len(prompt) <= 256

    long_context = tmp_path / "long-context"
    shutil.copytree(tiny_model_dir, long_context)
    config = json.loads((long_context / "config.json").read_text())
    (long_context / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    assert EchoEncoder.from_pretrained(str(long_context)).max_length == DEFAULT_MAX_LENGTH
    assert EchoEncoder.from_pretrained(str(long_context), max_length=64).max_length == 64
