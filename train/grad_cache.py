"""Gradient caching: a contrastive loss over a global batch far larger than fits in memory.

The loss couples every query with every document, so it cannot be split into independent
micro-batches. GradCache (Gao et al. 2021, luyug/GradCache) splits the *encoder* work
instead, in three phases:

1. forward every chunk without grad (under ``inference_mode``), recording the RNG state
   before each chunk;
2. compute the loss on the detached embeddings and backprop it to the embeddings only,
   giving d loss / d embedding for every row;
3. replay each chunk's forward with grad under its recorded RNG state (same dropout
   masks) and backprop the surrogate `(embedding * cached_gradient).sum()`, whose
   parameter gradient equals the full-batch one by the chain rule.

The last document chunk is the exception that saves a forward per step: phase 1 runs it
with grad and keeps its graph, and phase 3 backpropagates it first, without a replay, so
it is freed before any other chunk's graph exists.

Memory is one chunk's activations plus the embeddings. Parameter gradients accumulate
over chunks; the wrapper (DDP, DeepSpeed) must reduce them across ranks once, on the last
chunk. :mod:`train.backward` strategies encode how each wrapper is told so.

:func:`single_forward_step` is the uncached step for a batch that fits: one forward, one
backward, the same gradients.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

from train.backward import Backward


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


def _embed_chunks_without_grad(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    chunks: Sequence[Mapping[str, Tensor]],
    no_grad: Callable[[], AbstractContextManager],
) -> tuple[list[Tensor], list[_ChunkRandomState]]:
    """Phase 1: the embeddings of each chunk, and the RNG state each chunk started from."""
    states, embeddings = [], []
    with no_grad():
        for chunk in chunks:
            states.append(_ChunkRandomState())
            embeddings.append(encode(chunk))
    return embeddings, states


def _loss_and_embedding_gradients(
    loss_fn: Callable[[Tensor, Tensor], Tensor], query_embeddings: Sequence[Tensor], document_embeddings: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Phase 2: the loss, and its gradient w.r.t. every query and document embedding row.

    The embeddings (per chunk) become float32 leaves: the softmax over the whole global
    batch at a low temperature is sensitive to bf16 rounding, and the leaves cut the graph
    so this backward touches no encoder parameter. (Concatenated outside inference mode,
    inference tensors become ordinary ones.)
    """
    queries = torch.cat([chunk.detach() for chunk in query_embeddings]).float().requires_grad_()
    documents = torch.cat([chunk.detach() for chunk in document_embeddings]).float().requires_grad_()
    loss = loss_fn(queries, documents)
    loss.backward()
    return loss.detach(), queries.grad, documents.grad


def _replay_chunks_with_cached_gradients(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    chunks: Sequence[Mapping[str, Tensor]],
    states: Sequence[_ChunkRandomState],
    embedding_gradients: Tensor,
    backward: Backward,
    sync_on_last_chunk: bool,
) -> None:
    """Phase 3: re-run each chunk with grad under its RNG state and backprop its cached gradients."""
    start = 0
    for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        sync = sync_on_last_chunk and index == len(chunks) - 1
        with backward.sync_context(sync):
            with state.replay():
                embeddings = encode(chunk)
            _backward_cached(embeddings, embedding_gradients[start : start + embeddings.shape[0]], backward, sync)
            start += embeddings.shape[0]


def _backward_cached(embeddings: Tensor, cached_gradients: Tensor, backward: Backward, sync: bool) -> None:
    # d surrogate / d embeddings == cached_gradients, so the parameter gradient is the full-batch one.
    surrogate = (embeddings.float() * cached_gradients).sum()
    backward.backward(surrogate, sync)


def grad_cache_step(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    query_chunks: Sequence[Mapping[str, Tensor]],
    document_chunks: Sequence[Mapping[str, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    backward: Backward,
    sync: bool = True,
    *,
    inference_mode: bool = True,
) -> Tensor:
    """Accumulate into the parameter gradients those of `loss_fn` over all chunks; return the detached loss.

    encode: maps one chunk (a batch dict) to its embeddings [rows, d], with grad when enabled.
    loss_fn: (all query embeddings, all document embeddings) -> scalar; may gather across ranks
        (every rank must then run the same number of chunks). Any accumulation scaling
        (e.g. dividing by the number of micro-batches) belongs in it.
    backward: the `Backward` of the training wrapper (`train.backward`: `PlainBackward`, `make_backward`).
    sync: whether the last chunk's backward synchronises gradients across ranks; pass False
        for all but the last micro-batch of a gradient-accumulation cycle.
    inference_mode: run phase 1 under ``torch.inference_mode`` (else ``no_grad``: under
        ZeRO-3 the weights gathered there would become inference tensors, which a later
        forward with grad cannot save for backward).
    Does not step or zero the optimizer.
    """
    no_grad = torch.inference_mode if inference_mode else torch.no_grad
    *replayed_documents, kept_document = document_chunks
    query_embeddings, query_states = _embed_chunks_without_grad(encode, query_chunks, no_grad)
    document_embeddings, document_states = _embed_chunks_without_grad(encode, replayed_documents, no_grad)
    # Its backward is never the last, so it never syncs (DDP decides at forward time).
    with backward.sync_context(False):
        kept_embeddings = encode(kept_document)
    loss, query_gradients, document_gradients = _loss_and_embedding_gradients(
        loss_fn, query_embeddings, [*document_embeddings, kept_embeddings]
    )
    kept_rows = kept_embeddings.shape[0]
    with backward.sync_context(False):
        _backward_cached(kept_embeddings, document_gradients[-kept_rows:], backward, sync=False)
    _replay_chunks_with_cached_gradients(
        encode, query_chunks, query_states, query_gradients, backward, sync_on_last_chunk=sync and not replayed_documents
    )
    _replay_chunks_with_cached_gradients(
        encode, replayed_documents, document_states, document_gradients[:-kept_rows], backward, sync_on_last_chunk=sync
    )
    return loss


def single_forward_step(
    encode: Callable[[Mapping[str, Tensor]], Tensor],
    batch: Mapping[str, Tensor],
    num_queries: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    backward: Backward,
    sync: bool = True,
) -> Tensor:
    """The uncached step for a local batch that fits in memory: one forward, one backward.

    `batch` holds the queries (its first `num_queries` rows) and then the documents, so
    the model runs once per backward, as DDP requires, and GradCache's extra no-grad
    forward is saved. Returns the detached loss; gradients equal `grad_cache_step`'s.
    """
    with backward.sync_context(sync):
        embeddings = encode(batch).float()
        loss = loss_fn(embeddings[:num_queries], embeddings[num_queries:])
        backward.backward(loss, sync)
    return loss.detach()
