"""Gradient caching: a contrastive loss over a global batch far larger than fits in memory.

The loss couples every query with every passage, so it cannot be split into independent
micro-batches. GradCache (Gao et al. 2021, luyug/GradCache) splits the *encoder* work
instead, in three phases:

1. forward every chunk without grad, recording the RNG state before each chunk;
2. compute the loss on the detached embeddings and backprop it to the embeddings only,
   giving d loss / d embedding for every row;
3. replay each chunk's forward with grad under its recorded RNG state (same dropout
   masks) and backprop the surrogate `(embedding * cached_gradient).sum()`, whose
   parameter gradient equals the full-batch one by the chain rule.

Memory is one chunk's activations plus the embeddings. Parameter gradients accumulate
over chunks; the wrapper (DDP, DeepSpeed) must reduce them across ranks once, on the last
chunk. `ChunkBackward` strategies encode how each wrapper is told so.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch
from accelerate.utils import DistributedType
from torch import Tensor


def split_batch(batch: Mapping[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
    """Split every tensor of `batch` along dim 0 into chunks of `chunk_size` rows (the last may be shorter).

    Raises ValueError if `chunk_size` < 1, the batch is empty, or the tensors disagree on the row count.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not batch:
        raise ValueError("cannot split an empty batch (no tensors)")
    rows = {key: tensor.shape[0] for key, tensor in batch.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"batch tensors disagree on the number of rows: {rows}")
    total = next(iter(rows.values()))
    return [
        {key: tensor[start : start + chunk_size] for key, tensor in batch.items()}
        for start in range(0, total, chunk_size)
    ]


class _ChunkRandomState:
    """The RNG state before a chunk's first forward, so its replay draws the same dropout masks.

    Records the CPU generator and, when CUDA is in use, the current device's generator
    (as luyug/GradCache's RandContext does).
    """

    def __init__(self) -> None:
        self.cpu_state = torch.get_rng_state()
        cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_device = torch.cuda.current_device() if cuda_in_use else None
        self.cuda_state = torch.cuda.get_rng_state(self.cuda_device) if self.cuda_device is not None else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body under the recorded state; the outer RNG stream resumes unchanged afterwards."""
        devices = [] if self.cuda_device is None else [self.cuda_device]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_device is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_device)
            yield


class ChunkBackward(Protocol):
    """How to backprop one replayed chunk under a given gradient-synchronisation wrapper.

    `sync` is True only for the backward that must reduce gradients across ranks: the
    last chunk of the last micro-batch before the optimizer step. The caller owns that
    decision, so gradient accumulation over several GradCache steps works unchanged.
    """

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        """Wraps the chunk's replayed forward *and* its backward (DDP decides at forward time whether to sync)."""
        ...

    def backward(self, surrogate: Tensor, sync: bool) -> None:
        """Backprop the chunk's surrogate loss into the parameter gradients, unscaled."""
        ...


class PlainChunkBackward:
    """No wrapper, one process: gradients simply accumulate."""

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(self, surrogate: Tensor, sync: bool) -> None:
        surrogate.backward()


class NoSyncChunkBackward:
    """Accelerate without DeepSpeed (one process, DDP, FSDP): skip the all-reduce via `accelerator.no_sync`.

    Calls `.backward()` itself rather than `accelerator.backward`, which would divide by
    the accelerator's gradient_accumulation_steps; here the caller owns all scaling.
    An fp16 GradScaler, when present, still scales the surrogate.
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        self.model = model

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext() if sync else self.accelerator.no_sync(self.model)

    def backward(self, surrogate: Tensor, sync: bool) -> None:
        scaler = self.accelerator.scaler
        (surrogate if scaler is None else scaler.scale(surrogate)).backward()


class DeepSpeedChunkBackward:
    """DeepSpeed: drive the engine directly and never step inside the chunk loop.

    `accelerator.backward` under DeepSpeed calls `engine.step()` whenever
    `sync_gradients` is True, i.e. after the first chunk's backward, which would update
    the weights mid-batch. Instead each chunk sets the accumulation boundary (the engine
    all-reduces at the boundary for ZeRO 0/1; ZeRO 2/3 reduce partitions every backward
    and finalise at the boundary) and calls `engine.backward` with `scale_wrt_gas=False`
    because the caller owns the accumulation scaling. The caller calls `engine.step()`
    once per optimizer step, after the backward with `sync=True`.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(self, surrogate: Tensor, sync: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(sync)
        self.engine.backward(surrogate, scale_wrt_gas=False)


def make_chunk_backward(accelerator: Any, model: torch.nn.Module) -> ChunkBackward:
    """The `ChunkBackward` for an `accelerate.Accelerator` and the model it prepared.

    Raises RuntimeError under DeepSpeed if `accelerator.prepare` has not built the engine yet.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        wrapped = accelerator.deepspeed_engine_wrapped
        if wrapped is None:
            raise RuntimeError(
                "DeepSpeed engine not built: call accelerator.prepare(model, optimizer) before make_chunk_backward"
            )
        return DeepSpeedChunkBackward(wrapped.engine)
    return NoSyncChunkBackward(accelerator, model)


def _embed_chunks_without_grad(
    encode: Callable[[Mapping[str, Tensor]], Tensor], chunks: Sequence[Mapping[str, Tensor]]
) -> tuple[Tensor, list[_ChunkRandomState]]:
    """Phase 1: embeddings of all chunks, concatenated, and the RNG state each chunk started from."""
    states, embeddings = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_ChunkRandomState())
            embeddings.append(encode(chunk))
    return torch.cat(embeddings), states


def _loss_and_embedding_gradients(
    loss_fn: Callable[[Tensor, Tensor], Tensor], query_embeddings: Tensor, passage_embeddings: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Phase 2: the loss, and its gradient w.r.t. every query and passage embedding row.

    The embeddings become float32 leaves: the softmax over the whole global batch at a
    low temperature is sensitive to bf16 rounding, and the leaves cut the graph so this
    backward touches no encoder parameter.
    """
    queries = query_embeddings.detach().float().requires_grad_()
    passages = passage_embeddings.detach().float().requires_grad_()
    loss = loss_fn(queries, passages)
    loss.backward()
    return loss.detach(), queries.grad, passages.grad


def _replay_chunks_with_cached_gradients(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    chunks: Sequence[Mapping[str, Tensor]],
    states: Sequence[_ChunkRandomState],
    embedding_gradients: Tensor,
    backward: ChunkBackward,
    sync_on_last_chunk: bool,
) -> None:
    """Phase 3: re-run each chunk with grad under its RNG state and backprop its cached gradients."""
    start = 0
    for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        sync = sync_on_last_chunk and index == len(chunks) - 1
        with backward.sync_context(sync):
            with state.replay():
                embeddings = encode(chunk)
            cached = embedding_gradients[start : start + embeddings.shape[0]]
            start += embeddings.shape[0]
            # d surrogate / d embeddings == cached, so the parameter gradient is the full-batch one.
            surrogate = (embeddings.float() * cached).sum()
            backward.backward(surrogate, sync)


def grad_cache_step(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    query_chunks: Sequence[Mapping[str, Tensor]],
    passage_chunks: Sequence[Mapping[str, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    backward: ChunkBackward,
    sync: bool = True,
) -> Tensor:
    """Accumulate into the parameter gradients those of `loss_fn` over all chunks; return the detached loss.

    encode: maps one chunk (a batch dict) to its embeddings [rows, d], with grad when enabled.
    loss_fn: (all query embeddings, all passage embeddings) -> scalar; may gather across ranks
        (every rank must then run the same number of chunks). Any accumulation scaling
        (e.g. dividing by the number of micro-batches) belongs in it.
    backward: the `ChunkBackward` of the training wrapper (`PlainChunkBackward`, `make_chunk_backward`).
    sync: whether the last chunk's backward synchronises gradients across ranks; pass False
        for all but the last micro-batch of a gradient-accumulation cycle.
    Does not step or zero the optimizer.
    """
    query_embeddings, query_states = _embed_chunks_without_grad(encode, query_chunks)
    passage_embeddings, passage_states = _embed_chunks_without_grad(encode, passage_chunks)
    loss, query_gradients, passage_gradients = _loss_and_embedding_gradients(
        loss_fn, query_embeddings, passage_embeddings
    )
    _replay_chunks_with_cached_gradients(
        encode, query_chunks, query_states, query_gradients, backward, sync_on_last_chunk=False
    )
    _replay_chunks_with_cached_gradients(
        encode, passage_chunks, passage_states, passage_gradients, backward, sync_on_last_chunk=sync
    )
    return loss


def single_forward_step(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    batch: Mapping[str, Tensor],
    num_queries: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    backward: ChunkBackward,
    sync: bool = True,
) -> Tensor:
    """The uncached step for a local batch that fits in memory: one forward, one backward.

    `batch` holds the queries (its first `num_queries` rows) and then the passages, so
    the model runs once per backward, as DDP requires, and GradCache's extra no-grad
    forward is saved. Returns the detached loss; gradients equal `grad_cache_step`'s.
    """
    with backward.sync_context(sync):
        embeddings = encode(batch).float()
        loss = loss_fn(embeddings[:num_queries], embeddings[num_queries:])
        backward.backward(loss, sync)
    return loss.detach()
