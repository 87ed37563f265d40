"""Parity in bf16, the default training precision: GradCache equals one full-batch forward, and
2 processes equal 1, to within tolerances derived from bf16's precision.

The tiny LoRA Llama runs under bf16 autocast (EchoEncoder.autocast_dtype, as train/finetune.py
sets it for precision=bf16): weights and pooling stay float32, the matmuls round to bf16.

Tolerances. bf16 keeps 8 significand bits (7 stored, 1 implicit), so rounding to bf16 is
exact to a relative U = 2**-8. The two sides of each comparison compute the same function
with matmuls of other shapes (chunks vs the whole batch, half batches vs the whole), so the
CPU kernels block their sums differently and a bf16 rounding may fall the other way. Each
LoRA gradient element is an fp32 sum of bf16-rounded weight-gradient matmuls (one per chunk
replay on one side, one per batch on the other), fed by bf16 activations and bf16
activation gradients. Counting one rounding of each of those three, and one more for the
cancellation between chunk contributions, at the scale of the largest gradient element
g_max: |Δg| <= GRAD_ROUNDINGS * U * g_max, i.e. 4 * 2**-8 * g_max (1.6 % of g_max). The loss
is fp32 arithmetic on embeddings pooled in fp32 from bf16 hidden states; both sides must give
the same loss to one bf16 rounding of its value: |ΔL| <= U * |L|.
(Measured on CPU: gradients 0.8 U * g_max apart for GradCache, 1.2 U * g_max for 2 processes;
losses about 1e-3 U * |L|.)

Each tolerance is shown to be meaningful: a wrong RNG replay, one chunk's gradient off by 1/8,
and losing the other rank's negatives all exceed it.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaModel

from models.encoder import EchoEncoder
from models.lora import LoraConfig as ProjectLoraConfig
from models.lora import apply_lora, store_frozen_linear_weights
from models.templates import get_template_set
from tests.distributed import run_in_processes
from tests.test_grad_cache import chunks_of, contrastive_batch, tiny_lora_encoder
from tests.tiny_models import build_bpe_tokenizer, tiny_llama_config
from train.grad_cache import grad_cache_step
from train.loss import InfoNCELoss, text_key

U = 2.0**-8  # bf16 unit roundoff: 8 significand bits
GRAD_ROUNDINGS = 4  # weight-gradient matmul, its activations, its incoming gradient, chunk cancellation
TEMPERATURE = 0.02  # the training default: the low temperature is where bf16 rounding matters most
GLOBAL_QUERIES = 6
DOCUMENTS_PER_QUERY = 2  # the positive and one hard negative
WORLD_SIZE = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LocalBackward:
    """The chunk-backward protocol of train/grad_cache.py with no wrapper, or around a DDP model:
    DDP skips the all-reduce under no_sync, so only the backward with sync=True reduces."""

    def __init__(self, ddp: DistributedDataParallel | None = None) -> None:
        self.ddp = ddp

    def sync_context(self, sync: bool):
        return nullcontext() if self.ddp is None or sync else self.ddp.no_sync()

    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        loss.backward()


def bf16_lora_encoder(lora_dropout: float) -> EchoEncoder:
    """test_grad_cache's tiny LoRA Llama (B random too, so every adapter gets gradient), embedding under bf16 autocast."""
    encoder = tiny_lora_encoder(lora_dropout)
    encoder.autocast_dtype = torch.bfloat16
    return encoder


def global_batch(encoder: EchoEncoder):
    """test_grad_cache's contrastive batch: query and document prompts ([positive, hard negative] per query), keys."""
    return contrastive_batch(encoder, GLOBAL_QUERIES, hard_negatives=DOCUMENTS_PER_QUERY - 1)


def lora_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name.removeprefix("module."): p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def full_batch_step(encoder: EchoEncoder, queries, documents, query_keys, document_keys) -> tuple[float, dict]:
    """The naive step: every query and document padded into one forward, one backward."""
    encoder.model.zero_grad(set_to_none=True)
    embeddings = encoder.embed(encoder.collate(queries + documents)).float()
    loss = InfoNCELoss(TEMPERATURE)(embeddings[: len(queries)], embeddings[len(queries) :], query_keys, document_keys)
    loss.backward()
    return loss.item(), lora_gradients(encoder.model)


def grad_cache(encoder: EchoEncoder, encode, query_chunks, document_chunks, query_keys, document_keys,
               backward=None) -> tuple[float, dict]:
    encoder.model.zero_grad(set_to_none=True)
    loss_fn = InfoNCELoss(TEMPERATURE)
    loss = grad_cache_step(encode, query_chunks, document_chunks,
                           lambda q, d: loss_fn(q, d, query_keys, document_keys), backward or LocalBackward(), True)
    return loss.item(), lora_gradients(encoder.model)


def gradient_tolerance(expected: dict[str, torch.Tensor]) -> float:
    return GRAD_ROUNDINGS * U * max(g.abs().max().item() for g in expected.values())


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def assert_bf16_close(loss: float, gradients: dict, expected_loss: float, expected: dict) -> None:
    assert abs(loss - expected_loss) <= U * abs(expected_loss), (loss, expected_loss)
    tolerance = gradient_tolerance(expected)
    assert max_difference(gradients, expected) <= tolerance, (max_difference(gradients, expected), tolerance)


# -- GradCache vs the full graph ------------------------------------------------------------
def test_the_forward_runs_in_bf16():
    encoder = bf16_lora_encoder(lora_dropout=0.0)
    dtypes = []
    layer = encoder.model.base_model.model.layers[0].self_attn.q_proj.base_layer
    layer.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    queries, *_ = global_batch(encoder)
    encoder.embed(encoder.collate(queries))
    assert dtypes == [torch.bfloat16]


def test_bf16_grad_cache_equals_one_full_batch_forward():
    encoder = bf16_lora_encoder(lora_dropout=0.0)
    queries, documents, query_keys, document_keys = global_batch(encoder)
    expected_loss, expected = full_batch_step(encoder, queries, documents, query_keys, document_keys)
    # 6 queries in chunks of 4 (4, 2); 12 documents in chunks of 5 (5, 5, 2): uneven last chunks.
    query_chunks = chunks_of(queries, 4, encoder.collate)
    document_chunks = chunks_of(documents, 5, encoder.collate)
    loss, gradients = grad_cache(encoder, encoder.embed, query_chunks, document_chunks, query_keys, document_keys)
    assert_bf16_close(loss, gradients, expected_loss, expected)

    # The tolerance is meaningful: one replayed document chunk's gradient off by 1/8 exceeds it.
    replayed = document_chunks[0]

    def chunk_gradient_off(chunk):
        embeddings = encoder.embed(chunk)
        # Scaling the replayed embeddings scales this chunk's surrogate, i.e. its cached gradient.
        return embeddings * (1 + 2**-3) if torch.is_grad_enabled() and chunk is replayed else embeddings

    _, wrong = grad_cache(encoder, chunk_gradient_off, query_chunks, document_chunks, query_keys, document_keys)
    assert max_difference(wrong, expected) > gradient_tolerance(expected)


def test_bf16_grad_cache_replays_dropout_and_a_wrong_replay_exceeds_the_tolerance():
    """With LoRA dropout, the reference is the same chunk forwards kept in one graph (the same
    dropout masks drawn in the same order from the same seed)."""
    encoder = bf16_lora_encoder(lora_dropout=0.3)
    encoder.model.train()
    queries, documents, query_keys, document_keys = global_batch(encoder)
    query_chunks = chunks_of(queries, 4, encoder.collate)
    document_chunks = chunks_of(documents, 5, encoder.collate)

    encoder.model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    embeddings = torch.cat([encoder.embed(chunk) for chunk in query_chunks + document_chunks]).float()
    expected_loss_tensor = InfoNCELoss(TEMPERATURE)(embeddings[: len(queries)], embeddings[len(queries) :],
                                                    query_keys, document_keys)
    expected_loss_tensor.backward()
    expected_loss, expected = expected_loss_tensor.item(), lora_gradients(encoder.model)

    torch.manual_seed(1234)
    loss, gradients = grad_cache(encoder, encoder.embed, query_chunks, document_chunks, query_keys, document_keys)
    assert_bf16_close(loss, gradients, expected_loss, expected)

    def replay_with_other_masks(chunk):
        if torch.is_grad_enabled():  # the replay: draw fresh dropout masks instead of the recorded ones
            torch.manual_seed(99)
        return encoder.embed(chunk)

    torch.manual_seed(1234)
    _, wrong = grad_cache(encoder, replay_with_other_masks, query_chunks, document_chunks, query_keys, document_keys)
    assert max_difference(wrong, expected) > gradient_tolerance(expected)


# -- 2 processes vs 1 ---------------------------------------------------------------------
def _rank_worker(rank: int, world_size: int) -> tuple[float, dict[str, torch.Tensor]]:
    """This rank's half of the global batch through GradCache on a DDP model; returns the mean
    loss over ranks and the LoRA gradients DDP averaged over ranks."""
    encoder = bf16_lora_encoder(lora_dropout=0.0)
    queries, documents, query_keys, document_keys = global_batch(encoder)
    q, d = GLOBAL_QUERIES // world_size, GLOBAL_QUERIES // world_size * DOCUMENTS_PER_QUERY
    queries, query_keys = queries[rank * q : (rank + 1) * q], query_keys[rank * q : (rank + 1) * q]
    documents, document_keys = documents[rank * d : (rank + 1) * d], document_keys[rank * d : (rank + 1) * d]
    encoder.model = DistributedDataParallel(encoder.model)
    # 3 local queries in chunks of 2 (2, 1); 6 local documents in chunks of 4 (4, 2).
    loss, gradients = grad_cache(encoder, encoder.embed, chunks_of(queries, 2, encoder.collate),
                                 chunks_of(documents, 4, encoder.collate), query_keys, document_keys,
                                 LocalBackward(encoder.model))
    mean_loss = torch.tensor(loss)
    dist.all_reduce(mean_loss)
    return mean_loss.item() / world_size, gradients


@pytest.fixture(scope="module")
def rank_results() -> list[tuple[float, dict]]:
    return run_in_processes(_rank_worker, world_size=WORLD_SIZE)


@pytest.mark.slow  # two spawned processes: about 30 s of imports and setup on 2 cores
def test_two_bf16_processes_equal_one_with_the_global_batch(rank_results):
    encoder = bf16_lora_encoder(lora_dropout=0.0)
    queries, documents, query_keys, document_keys = global_batch(encoder)
    expected_loss, expected = full_batch_step(encoder, queries, documents, query_keys, document_keys)
    for loss, gradients in rank_results:
        assert_bf16_close(loss, gradients, expected_loss, expected)

    # The tolerance is meaningful: one process per half batch, each half with only its own
    # negatives (what ranks compute when the loss does not gather), exceeds it.
    q, d = GLOBAL_QUERIES // WORLD_SIZE, GLOBAL_QUERIES // WORLD_SIZE * DOCUMENTS_PER_QUERY
    halves = [full_batch_step(encoder, queries[r * q : (r + 1) * q], documents[r * d : (r + 1) * d],
                              query_keys[r * q : (r + 1) * q], document_keys[r * d : (r + 1) * d])
              for r in range(WORLD_SIZE)]
    local_loss = sum(loss for loss, _ in halves) / WORLD_SIZE
    local_gradients = {name: sum(g[name] for _, g in halves) / WORLD_SIZE for name in expected}
    assert abs(local_loss - expected_loss) > U * abs(expected_loss)
    assert max_difference(local_gradients, expected) > gradient_tolerance(expected)


# -- frozen base weights stored in bf16 ------------------------------------------------------
def test_frozen_linear_weights_stored_in_bf16_give_the_autocast_step_exactly():
    """Autocast rounds each float32 weight to bf16 for every matmul; a weight stored rounded gives the
    same products. Embeddings, norms and LoRA stay float32, so the step is bit-identical."""
    encoder = bf16_lora_encoder(lora_dropout=0.0)
    queries, documents, query_keys, document_keys = global_batch(encoder)
    expected_loss, expected = full_batch_step(encoder, queries, documents, query_keys, document_keys)
    stored = copy.deepcopy(encoder)
    store_frozen_linear_weights(stored.model, torch.bfloat16)
    linear = stored.model.base_model.model.layers[0].self_attn.q_proj
    assert linear.base_layer.weight.dtype == torch.bfloat16 and linear.lora_A.default.weight.dtype == torch.float32
    assert stored.model.base_model.model.embed_tokens.weight.dtype == torch.float32
    loss, gradients = full_batch_step(stored, queries, documents, query_keys, document_keys)
    assert loss == expected_loss
    assert max_difference(gradients, expected) == 0.0
    assert all(gradient.dtype == torch.float32 for gradient in gradients.values())
    # Without autocast the bf16 weights would meet float32 activations: the forward needs it.
    stored.autocast_dtype = None
    with pytest.raises(RuntimeError):
        stored.embed(stored.collate(queries))


def test_apply_lora_over_a_bf16_base_trains_float32_weights_with_float32_optimizer_state():
    tokenizer = build_bpe_tokenizer()
    model = LlamaModel(tiny_llama_config(len(tokenizer))).to(torch.bfloat16)
    peft_model = apply_lora(model, ProjectLoraConfig(r=4, trainable_eos=True), tokenizer.eos_token_id)
    trainable = [param for param in peft_model.parameters() if param.requires_grad]
    frozen = [param for param in peft_model.parameters() if not param.requires_grad]
    assert trainable and all(param.dtype == torch.float32 for param in trainable)
    assert frozen and all(param.dtype == torch.bfloat16 for param in frozen)
    encoder = EchoEncoder(peft_model, tokenizer, get_template_set("echo"), autocast_dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    encoder.embed(encoder.collate(encoder.tokenize(["cats", "where do birds fly in winter?"], "query"))).sum().backward()
    optimizer.step()
    states = [state for state in optimizer.state.values()]
    assert len(states) == len(trainable)
    assert all(state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32 for state in states)
