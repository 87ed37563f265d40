"""GradCache parity: its LoRA gradients equal those of the same loss backpropagated through one full graph.

Runs the real embedding path (EchoEncoder.embed: echo template, mean pooling over the
pooled_mask) on a tiny random Llama with LoRA, and uneven last chunks.
"""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from peft import LoraConfig, get_peft_model
from transformers import LlamaModel

import train.grad_cache
from models.encoder import EchoEncoder
from models.templates import get_template_set
from tests.distributed import run_in_processes
from tests.tiny_models import build_bpe_tokenizer, tiny_llama_config
from train.backward import DeepSpeedBackward, PlainBackward, make_backward
from train.collate import chunk_prompts, in_batch_order
from train.grad_cache import grad_cache_step, single_forward_step
from train.loss import InfoNCELoss, text_key

SENTENCES = [
    "where do birds fly in winter?",
    "Many birds migrate south in the winter to find food and warmth.",
    "cats",
    "the quick brown fox jumps over the lazy dog",
    "a fast dark fox leaps over a sleepy hound and runs to the river",
    "mountains and the sea",
    "hello world means greeting",
    "rivers flow to the sea through mountains",
    "dogs and cats in one paragraph",
    "what does hello world mean?",
    "write about the lazy dog",
    "the sea is warm in winter",
    "birds",
    "food",
    "a sleepy hound",
]
INSTRUCTION = "Retrieve semantically similar text"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lora_encoder(lora_dropout: float, seed: int = 0) -> EchoEncoder:
    """A tiny random Llama with LoRA on every linear layer; LoRA B random too, so every adapter gets gradient."""
    tokenizer = build_bpe_tokenizer()
    torch.manual_seed(seed)
    model = LlamaModel(tiny_llama_config(len(tokenizer)))
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=lora_dropout, target_modules=LORA_TARGETS, init_lora_weights=False
    )
    return EchoEncoder(get_peft_model(model, lora), tokenizer, get_template_set("echo"), pooling="mean")


def contrastive_batch(encoder: EchoEncoder, num_queries: int, hard_negatives: int, offset: int = 0):
    """Prompts of queries and documents ([positive, hard negatives] per query) with their text keys.

    Query i's documents are the next sentences in SENTENCES, so texts repeat across queries
    (duplicate texts exercise the false-negative mask).
    """
    group = 1 + hard_negatives
    query_texts = [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(num_queries)]
    document_texts = [SENTENCES[(offset + i + 1 + j) % len(SENTENCES)] for i in range(num_queries) for j in range(group)]
    queries = encoder.tokenize(query_texts, "query", INSTRUCTION)
    documents = encoder.tokenize(document_texts, "document")
    query_keys = torch.tensor([text_key(t) for t in query_texts])
    document_keys = torch.tensor([text_key(t) for t in document_texts])
    return queries, documents, query_keys, document_keys


def chunks_of(prompts, size, collate) -> list[dict[str, torch.Tensor]]:
    """Collated chunks of ``size`` prompts in batch order (``None``: one chunk); GradCache's contract holds for any chunking."""
    size = size or len(prompts)
    return [collate(prompts[start : start + size]) for start in range(0, len(prompts), size)]


def lora_gradients(encoder: EchoEncoder) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in encoder.model.named_parameters() if p.requires_grad}


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def assert_gradients_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """float32 parity: gradients reach ~20 here, so a 1e-5 relative term covers rounding of different matmul shapes."""
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=lambda message: f"{name}: {message}"
        )


def full_graph_step(encode, query_chunks, document_chunks, loss_fn) -> torch.Tensor:
    """The naive version: the same chunk forwards in the same order, all kept in one graph."""
    queries = torch.cat([encode(chunk) for chunk in query_chunks])
    documents = torch.cat([encode(chunk) for chunk in document_chunks])
    loss = loss_fn(queries, documents)
    loss.backward()
    return loss.detach()


def _run(step, encoder, query_chunks, document_chunks, loss_fn, **kwargs):
    encoder.model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    loss = step(encoder.embed, query_chunks, document_chunks, loss_fn, **kwargs)
    return loss, lora_gradients(encoder)


def _setup(lora_dropout: float, matryoshka_dims: list[int] | None = None):
    encoder = tiny_lora_encoder(lora_dropout)
    queries, documents, query_keys, document_keys = contrastive_batch(encoder, num_queries=5, hard_negatives=1)
    loss = InfoNCELoss(temperature=0.05, symmetric=True, matryoshka_dims=matryoshka_dims)

    def loss_fn(q, p):
        return loss(q, p, query_keys, document_keys)

    # 5 queries in chunks of 2 (2, 2, 1); 10 documents in chunks of 3 (3, 3, 3, 1), each chunk collated on its own.
    return encoder, chunks_of(queries, 2, encoder.collate), chunks_of(documents, 3, encoder.collate), loss_fn


@pytest.mark.parametrize("packed", [True, False])
def test_chunk_prompts_groups_by_length_within_both_caps_and_the_order_restores_the_batch(packed):
    encoder = tiny_lora_encoder(lora_dropout=0.0)
    encoder = EchoEncoder(encoder.model, encoder.tokenizer, encoder.templates, packing=packed)
    texts = ["a", "the fox crossed the wide river at dawn", "b c", "snow", "the quick brown fox jumps over the dog"]
    prompts = encoder.tokenize(texts, "document")
    lengths = [len(prompt) for prompt in prompts]
    budget = max(lengths) + min(lengths) + 1
    chunks, order = chunk_prompts(prompts, 2, budget, encoder.collate, packed=packed)
    longest_first = sorted(range(len(prompts)), key=lambda row: -lengths[row])
    assert order.tolist() == longest_first
    start = 0
    for chunk in chunks:
        rows = order[start : start + (len(chunk["cu_seq_lens"]) - 1 if packed else len(chunk["input_ids"]))].tolist()
        start += len(rows)
        assert 1 <= len(rows) <= 2
        tokens = sum(lengths[row] for row in rows) if packed else max(lengths[row] for row in rows) * len(rows)
        assert tokens <= budget or len(rows) == 1
        # Each chunk holds exactly its prompts' ids.
        ids = chunk["input_ids"][0].tolist() if packed else [
            token for position, row in enumerate(rows) for token in chunk["input_ids"][position, : lengths[row]].tolist()]
        assert ids == [token for row in rows for token in prompts[row].input_ids]
    assert start == len(prompts)
    # Embedding rows in chunk order, put back in the batch's order, are the batch's embeddings.
    rows_in_chunk_order = torch.cat([encoder.embed(chunk) for chunk in chunks])
    expected = encoder.embed(encoder.collate(prompts))
    torch.testing.assert_close(in_batch_order(rows_in_chunk_order, order), expected, atol=1e-5, rtol=0)
    (whole,), whole_order = chunk_prompts(prompts, None, None, encoder.collate, packed=packed)
    assert whole_order.tolist() == longest_first and whole["input_ids"].numel() == (
        sum(lengths) if packed else max(lengths) * len(prompts))


def test_chunk_prompts_rejects_an_empty_batch():
    encoder = tiny_lora_encoder(lora_dropout=0.0)
    with pytest.raises(ValueError, match="empty"):
        chunk_prompts([], 2, None, encoder.collate, packed=True)


@pytest.mark.parametrize("matryoshka_dims", [None, [4, 16]])
def test_grad_cache_equals_full_graph_with_lora_dropout_replayed(matryoshka_dims):
    """With Matryoshka too: its terms are a function of the cached embeddings like any loss (width 32 here)."""
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.3, matryoshka_dims=matryoshka_dims)
    encoder.model.train()
    expected_loss, expected = _run(full_graph_step, encoder, query_chunks, document_chunks, loss_fn)
    loss, cached = _run(grad_cache_step, encoder, query_chunks, document_chunks, loss_fn, backward=PlainBackward())
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)
    assert_gradients_close(cached, expected)
    assert max(g.abs().max().item() for g in expected.values()) > 1e-2  # the comparison is not between zeros


def test_without_rng_replay_the_dropout_masks_and_gradients_differ(monkeypatch):
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.3)
    encoder.model.train()
    _, expected = _run(full_graph_step, encoder, query_chunks, document_chunks, loss_fn)

    @contextmanager
    def no_replay(self):
        yield

    monkeypatch.setattr(train.grad_cache._ChunkRandomState, "replay", no_replay)
    _, unreplayed = _run(grad_cache_step, encoder, query_chunks, document_chunks, loss_fn, backward=PlainBackward())
    assert max_abs_difference(unreplayed, expected) > 1e-3


def test_grad_cache_equals_one_full_batch_forward_without_dropout():
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.0)
    queries, documents, _, _ = contrastive_batch(encoder, num_queries=5, hard_negatives=1)  # _setup's batch
    (whole_queries,) = chunks_of(queries, None, encoder.collate)
    (whole_documents,) = chunks_of(documents, None, encoder.collate)
    expected_loss, expected = _run(full_graph_step, encoder, [whole_queries], [whole_documents], loss_fn)
    loss, cached = _run(grad_cache_step, encoder, query_chunks, document_chunks, loss_fn, backward=PlainBackward())
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)
    assert_gradients_close(cached, expected)


def test_single_forward_step_equals_grad_cache():
    """The uncached path (queries and documents padded into one forward) gives GradCache's loss and gradients."""
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.0)
    expected_loss, expected = _run(grad_cache_step, encoder, query_chunks, document_chunks, loss_fn, backward=PlainBackward())
    # The same texts as _setup's contrastive_batch(num_queries=5, hard_negatives=1).
    query_texts = [SENTENCES[i] for i in range(5)]
    document_texts = [SENTENCES[i + 1 + j] for i in range(5) for j in range(2)]
    joint = encoder.collate(encoder.tokenize(query_texts, "query", INSTRUCTION) + encoder.tokenize(document_texts, "document"))
    encoder.model.zero_grad(set_to_none=True)
    loss = single_forward_step(encoder.embed, joint, 5, loss_fn, PlainBackward())
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    assert_gradients_close(lora_gradients(encoder), expected)


class _RecordingBackward:
    """Records the sync flag of every chunk backward and whether the chunk's forward ran inside sync_context."""

    def __init__(self) -> None:
        self.syncs: list[bool] = []
        self.inside_context = False
        self.forwards_inside_context: list[bool] = []

    @contextmanager
    def sync_context(self, sync: bool):
        self.inside_context = True
        yield
        self.inside_context = False

    def backward(self, surrogate: torch.Tensor, sync: bool) -> None:
        self.syncs.append(sync)
        surrogate.backward()


@pytest.mark.parametrize("sync", [True, False])
def test_only_the_last_document_chunk_synchronises_and_replays_run_inside_the_context(sync):
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.0)
    recorder = _RecordingBackward()

    def encode(chunk):
        if torch.is_grad_enabled():
            recorder.forwards_inside_context.append(recorder.inside_context)
        return encoder.embed(chunk)

    grad_cache_step(encode, query_chunks, document_chunks, loss_fn, recorder, sync=sync)
    assert recorder.syncs == [False] * 6 + [sync]
    assert recorder.forwards_inside_context == [True] * 7


@pytest.mark.parametrize("inference_mode", [True, False])
def test_the_last_document_chunk_is_not_replayed_and_either_first_pass_gives_the_full_graph_gradients(inference_mode):
    """3 query and 4 document chunks: 7 first-pass forwards, 6 replays (the kept chunk's graph serves its backward)."""
    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.3)
    encoder.model.train()
    _, expected = _run(full_graph_step, encoder, query_chunks, document_chunks, loss_fn)
    forwards = {"without grad": 0, "with grad": 0, "inference mode": 0}

    def counting_encode(chunk):
        forwards["with grad" if torch.is_grad_enabled() else "without grad"] += 1
        forwards["inference mode"] += torch.is_inference_mode_enabled()
        return encoder.embed(chunk)

    encoder.model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    grad_cache_step(counting_encode, query_chunks, document_chunks, loss_fn, PlainBackward(), inference_mode=inference_mode)
    assert_gradients_close(lora_gradients(encoder), expected)
    assert forwards == {"without grad": 6, "with grad": 1 + 6, "inference mode": 6 if inference_mode else 0}


def _deepspeed_worker(rank: int, world_size: int, zero_stage: int) -> dict:
    """GradCache through a real one-process DeepSpeed engine; gradients read before and after the caller's step."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    encoder, query_chunks, document_chunks, loss_fn = _setup(lora_dropout=0.0)
    _, expected = _run(full_graph_step, encoder, query_chunks, document_chunks, loss_fn)
    encoder.model.zero_grad(set_to_none=True)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        # Were the surrogate scaled by 1/gradient_accumulation_steps, the gradients would be 4x too small.
        "gradient_accumulation_steps": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.0}},
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": zero_stage},
    }
    parameters = [p for p in encoder.model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=encoder.model, model_parameters=parameters, config=config)
    encoder.model = engine
    grad_cache_step(encoder.embed, query_chunks, document_chunks, loss_fn, DeepSpeedBackward(engine), sync=True)
    gradients = {name: safe_get_full_grad(p).clone() for name, p in engine.module.named_parameters() if p.requires_grad}
    steps_inside = engine.global_steps
    engine.step()
    return {
        "expected": expected,
        "gradients": gradients,
        "steps_inside": steps_inside,
        "steps_after": engine.global_steps,
    }


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_deepspeed_chunk_backward_matches_full_graph_and_never_steps(zero_stage):
    (result,) = run_in_processes(_deepspeed_worker, world_size=1, args=(zero_stage,))
    assert_gradients_close(result["gradients"], result["expected"])
    assert result["steps_inside"] == 0 and result["steps_after"] == 1


def test_make_backward_drives_the_deepspeed_engine_only_once_prepared():
    engine = object()
    wrapped = SimpleNamespace(engine=engine)
    prepared = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_engine_wrapped=wrapped)
    chunk_backward = make_backward(prepared, model=None)
    assert isinstance(chunk_backward, DeepSpeedBackward) and chunk_backward.engine is engine
    unprepared = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_engine_wrapped=None)
    with pytest.raises(RuntimeError, match="accelerator.prepare"):
        make_backward(unprepared, model=None)
