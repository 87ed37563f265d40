"""Padding-free packing: a packed forward gives the padded forward's embeddings, loss and LoRA gradients.

Runs the real embedding path on a tiny random Llama with grouped-query attention (4
heads, 2 key/value heads) and LoRA, in float32, so packed and padded agree to float32
rounding: embeddings to 1e-5, and the loss and LoRA gradients of one training step
(single forward, and GradCache with token-budget chunks grouped by length).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaModel

from models.encoder import EchoEncoder
from models.packing import PACKED_SDPA, length_buckets, pack_prompts, packed_sdpa_attention, use_packed_attention
from models.templates import get_template_set
from models.tokenization import PromptIds
from tests.test_grad_cache import (INSTRUCTION, SENTENCES, assert_gradients_close, contrastive_batch, lora_gradients,
                                   max_abs_difference, tiny_lora_encoder)
from tests.tiny_models import build_bpe_tokenizer, tiny_llama_config
from train.backward import PlainBackward
from train.collate import chunk_prompts, in_batch_order
from train.grad_cache import grad_cache_step, single_forward_step
from train.loss import InfoNCELoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encoders(pooling: str = "mean", template_set: str = "echo") -> tuple[EchoEncoder, EchoEncoder]:
    """A packed and a padded encoder over the same tiny LoRA model (LoRA B random, so adapters matter)."""
    packed = tiny_lora_encoder(lora_dropout=0.0)
    packed = EchoEncoder(packed.model, packed.tokenizer, get_template_set(template_set), pooling=pooling)
    padded = EchoEncoder(packed.model, packed.tokenizer, packed.templates, pooling=pooling, packing=False)
    return packed, padded


def test_pack_prompts_lays_prompts_end_to_end_with_positions_restarting():
    prompts = [PromptIds((5, 6, 7), (0, 1, 1)), PromptIds((8,), (1,)), PromptIds((9, 10), (1, 0))]
    packed = pack_prompts(prompts)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packed["pooled_mask"].tolist() == [0, 1, 1, 1, 1, 0]
    assert packed["cu_seq_lens"].tolist() == [0, 3, 4, 6] and packed["cu_seq_lens"].dtype == torch.int32


@pytest.mark.parametrize("pooling, template_set", [("mean", "echo"), ("last", "echo"), ("mean", "classical")])
def test_packed_embeddings_equal_padded_ones(pooling, template_set):
    packed, padded = encoders(pooling, template_set)
    queries, documents, _, _ = contrastive_batch(packed, num_queries=5, hard_negatives=1)
    prompts = queries + documents  # short queries beside longer documents: most of a padded batch is padding
    expected = padded.embed(padded.collate(prompts))
    actual = packed.embed(packed.collate(prompts))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    padded_tokens = padded.collate(prompts)["input_ids"].numel()
    assert packed.collate(prompts)["input_ids"].numel() == sum(len(prompt) for prompt in prompts) < padded_tokens


def test_packed_prompts_do_not_attend_to_each_other():
    packed, _ = encoders()
    first, second, other = packed.tokenize([SENTENCES[3], SENTENCES[1], SENTENCES[7]], "document")
    alone = packed.embed(packed.collate([second]))
    after_first = packed.embed(packed.collate([first, second]))[1]
    after_other = packed.embed(packed.collate([other, second]))[1]
    torch.testing.assert_close(after_first, alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(after_other, alone[0], atol=1e-6, rtol=0)

    # Without the boundaries, attention over the packed row crosses prompts: the check can fail.
    batch = packed.collate([first, second])
    hidden = packed.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).last_hidden_state
    assert (hidden[0, -1] - packed.model(**{key: batch[key][:, len(first):] for key in ("input_ids", "position_ids")})
            .last_hidden_state[0, -1]).abs().max() > 1e-3


def test_a_padded_batch_runs_under_packed_attention_exactly_as_under_sdpa():
    tokenizer = build_bpe_tokenizer()
    torch.manual_seed(0)
    model = LlamaModel(tiny_llama_config(len(tokenizer)))
    sdpa = EchoEncoder(model, tokenizer, get_template_set("echo"), packing=False)
    prompts = sdpa.tokenize(SENTENCES[:6], "query", INSTRUCTION)
    expected = sdpa.embed(sdpa.collate(prompts))
    assert model.config._attn_implementation == "sdpa"
    use_packed_attention(model)
    assert model.config._attn_implementation == PACKED_SDPA
    torch.testing.assert_close(sdpa.embed(sdpa.collate(prompts)), expected, atol=0, rtol=0)


def test_length_buckets_group_longest_first_and_never_pad_a_prompt_past_twice_its_length():
    # Hand-worked: sorted 9, 8, 5, 4, 4, 2, 1; 4 < 0.5 * 9 opens a bucket, 1 < 0.5 * 4 another.
    assert length_buckets([4, 9, 1, 5, 8, 2, 4]) == [[1, 4, 3], [0, 6, 5], [2]]


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)])
def test_packed_sdpa_equals_causal_attention_run_prompt_by_prompt(heads, kv_heads):
    """The bucketed blocks give each prompt exactly its own causal attention, forward and backward."""
    torch.manual_seed(0)
    lengths = [7, 1, 12, 3, 5, 11, 2]  # three buckets, a one-token prompt
    cu_seq_lens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    tokens, dim = sum(lengths), 8
    leaves = [torch.randn(1, count, tokens, dim, dtype=torch.float64, requires_grad=True)
              for count in (heads, kv_heads, kv_heads)]
    weights = torch.randn(1, tokens, heads, dim, dtype=torch.float64)

    def reference(query, key, value):
        repeat = heads // kv_heads
        rows = []
        for start, end in zip(cu_seq_lens[:-1].tolist(), cu_seq_lens[1:].tolist()):
            q = query[0, :, start:end]
            k, v = (x[0, :, start:end].repeat_interleave(repeat, dim=0) for x in (key, value))
            scores = q @ k.transpose(-1, -2) / dim**0.5
            scores = scores.masked_fill(torch.ones(end - start, end - start).triu(1).bool(), float("-inf"))
            rows.append((scores.softmax(-1) @ v).transpose(0, 1))  # [tokens, heads, dim]
        return torch.cat(rows).unsqueeze(0)

    got, _ = packed_sdpa_attention(None, *leaves, None, cu_seq_lens_q=cu_seq_lens)
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    want = reference(*leaves)
    want_grads = torch.autograd.grad((want * weights).sum(), leaves)
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads):
        torch.testing.assert_close(got_grad, want_grad)


def test_packing_refuses_an_attention_that_cannot_keep_prompts_apart():
    model = LlamaModel(tiny_llama_config(64))
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="packing=False"):
        use_packed_attention(model)


def _loss_fn(query_keys, document_keys):
    loss = InfoNCELoss(temperature=0.05, symmetric=True)
    return lambda queries, documents: loss(queries, documents, query_keys, document_keys)


def _step(encoder: EchoEncoder, run) -> tuple[float, dict[str, torch.Tensor]]:
    encoder.model.zero_grad(set_to_none=True)
    loss = run(encoder)
    return loss.item(), lora_gradients(encoder)


def test_one_forward_training_step_packed_equals_padded():
    packed, padded = encoders()
    queries, documents, query_keys, document_keys = contrastive_batch(packed, num_queries=5, hard_negatives=2)
    loss_fn = _loss_fn(query_keys, document_keys)

    def run(encoder):
        return single_forward_step(encoder.embed, encoder.collate(queries + documents), len(queries), loss_fn,
                                   PlainBackward())

    expected_loss, expected = _step(padded, run)
    loss, gradients = _step(packed, run)
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert_gradients_close(gradients, expected)
    assert max(gradient.abs().max().item() for gradient in expected.values()) > 1e-2  # not a comparison of zeros


@pytest.mark.parametrize("chunk_size, chunk_tokens", [(None, 200), (3, 120), (4, None)])
def test_grad_cache_in_length_grouped_token_budget_chunks_equals_one_padded_forward(chunk_size, chunk_tokens):
    """What TrainingStep does under GradCache (chunk_prompts, loss in batch order), against the padded full batch."""
    packed, padded = encoders()
    queries, documents, query_keys, document_keys = contrastive_batch(packed, num_queries=5, hard_negatives=2)
    loss_fn = _loss_fn(query_keys, document_keys)
    expected_loss, expected = _step(padded, lambda encoder: single_forward_step(
        encoder.embed, encoder.collate(queries + documents), len(queries), loss_fn, PlainBackward()))

    query_chunks, query_order = chunk_prompts(queries, chunk_size, chunk_tokens, packed.collate, packed=True)
    document_chunks, document_order = chunk_prompts(documents, chunk_size, chunk_tokens, packed.collate, packed=True)
    assert len(document_chunks) > 2 and document_order.tolist() != sorted(document_order.tolist())  # regrouped

    def loss_in_chunk_order(queries, documents):
        return loss_fn(in_batch_order(queries, query_order), in_batch_order(documents, document_order))

    loss, gradients = _step(packed, lambda encoder: grad_cache_step(
        encoder.embed, query_chunks, document_chunks, loss_in_chunk_order, PlainBackward()))
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert_gradients_close(gradients, expected)

    # Pairing the rows in chunk order instead of the batch's breaks the parity: the check can fail.
    _, misordered = _step(packed, lambda encoder: grad_cache_step(
        encoder.embed, query_chunks, document_chunks, loss_fn, PlainBackward()))
    assert max_abs_difference(misordered, expected) > 1e-3
