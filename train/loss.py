"""InfoNCE over in-batch and hard negatives, with cross-process negatives and duplicate masking.

Every query is scored against every document of the *global* batch (all ranks), so the
number of negatives grows with the world size. Embeddings of the other ranks are
gathered with an autograd-aware all-gather: the gradient of each rank's loss reaches
the rank that produced the embedding. `accelerator.gather` would carry no gradient.

Matryoshka (`matryoshka_dims`, Kusupati et al. 2022): the same InfoNCE is computed on the
first `d` components of every embedding, re-normalised, for each listed `d` and for the
full width (always a term, listed or not: the model is still used at full width), and the
loss is the *mean* of these terms. MRL sums them (weights 1, as sentence-transformers'
MatryoshkaLoss); the mean is that sum divided by the number of terms, chosen so the loss,
its logged value and the gradient-clipping threshold keep the scale of a run without
Matryoshka. The embeddings are gathered once at full width and truncated after the gather.
The loss is a function of the embeddings only, so GradCache's cached embedding gradients
carry every width's term (tests/test_grad_cache.py).
"""

import hashlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

_SIXTY_THREE_BITS = (1 << 63) - 1


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if _is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns to each rank the summed gradient of its own slice.

    Written out rather than `torch.distributed.nn.functional.all_gather` (deprecated in
    recent torch, and its replacement is private API that changes between releases).
    The backward all-reduces the whole gathered gradient, which every backend supports
    (gloo has no reduce-scatter); for embedding-sized tensors the extra traffic is small.
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), t.shape[0]
        gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, t.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Sum over ranks: every rank's loss scores this rank's rows as candidates.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate `t` from all ranks along dim 0, rank order; gradient flows back to each rank's slice.

    The gradient a rank receives for its slice is the sum, over all ranks, of the
    gradient each rank's loss sends to that slice. Every rank must pass a tensor of the
    same shape and run the backward. Identity when torch.distributed is not initialized
    or the world size is 1.
    """
    if not _is_distributed():
        return t
    return _AllGatherWithGrad.apply(t)


def _gather_without_grad(t: Tensor) -> Tensor:
    """Concatenate `t` (ids, no gradient) from all ranks along dim 0, rank order."""
    if not _is_distributed():
        return t
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return torch.cat(gathered, dim=0)


def text_key(text: str) -> int:
    """A stable 63-bit id of `text` (same text => same id, in every process and run).

    Python's `hash` is salted per process, so it cannot compare texts across ranks.
    63 bits so the id fits a non-negative int64 tensor element.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _SIXTY_THREE_BITS


def _cross_entropy_with_duplicates_masked(
    logits: Tensor, labels: Tensor, candidate_keys: Tensor, row_keys: Tensor
) -> Tensor:
    """Mean cross-entropy over rows, ignoring candidates that repeat the text of the row's label.

    A candidate with the same text as the row's own positive is not a negative (it is the
    same answer seen twice in the global batch); scoring it as one would push the query
    away from its own answer. The label itself is kept.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    duplicate = candidate_keys[None, :] == row_keys[:, None]
    duplicate[rows, labels] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    # Mean over this rank's rows: see the normalisation note in InfoNCELoss.forward.
    return F.cross_entropy(logits, labels)


def _prefix(unit_rows: Tensor, width: int) -> Tensor:
    """The first ``width`` components of each unit-norm row, re-normalised (at the full width, the rows themselves)."""
    return unit_rows if width == unit_rows.shape[1] else F.normalize(unit_rows[:, :width], dim=-1)


def matryoshka_widths(dims: Sequence[int] | None, width: int) -> list[int]:
    """The prefix widths the loss is computed at: ``dims`` ascending, then ``width`` (the full one) if not listed.

    Raises ValueError when a dim is not in 1..width.
    """
    dims = sorted(set(dims or ()))
    if dims and not 1 <= dims[0] <= dims[-1] <= width:
        raise ValueError(f"matryoshka dims {dims} must lie in 1..{width}, the embedding width")
    return dims if dims and dims[-1] == width else [*dims, width]


class InfoNCELoss(nn.Module):
    """Cosine-similarity InfoNCE with in-batch, hard and cross-process negatives, optionally Matryoshka."""

    def __init__(self, temperature: float = 0.02, symmetric: bool = False,
                 matryoshka_dims: Sequence[int] | None = None) -> None:
        """`temperature` divides the cosine similarities (the paper uses 1/50).

        `symmetric` adds the document->query direction (each positive scored against all
        queries of the global batch) and averages the two directions. `matryoshka_dims`
        makes the loss the mean of the loss at each of these prefix widths and the full
        width (module docstring).
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.matryoshka_dims = tuple(matryoshka_dims or ())

    def forward(self, queries: Tensor, documents: Tensor, query_keys: Tensor, document_keys: Tensor) -> Tensor:
        """Loss of this rank's queries against the documents of all ranks.

        queries: [b, d] this rank's query embeddings.
        documents: [b * (1 + k), d], per query [positive, hard_negative_1..k] contiguous.
        query_keys: [b] int64 `text_key` of each query text.
        document_keys: [b * (1 + k)] int64 `text_key` of each document text.
        Returns the mean over this rank's queries (with Matryoshka, the mean of that over the
        widths). Raises ValueError on inconsistent shapes and Matryoshka dims beyond the width.

        Normalisation: each rank returns the mean over its b queries. The backward of the
        gather sums every rank's gradient into the owner of each embedding, so the
        gradient on rank r is d(sum_s L_s)/d(theta via rank r's embeddings). DDP (and
        DeepSpeed) then average over the W ranks, which gives
        d/d(theta) [(1/W) sum_s (1/b) sum_i l_i] = the gradient of the mean over the whole
        global batch of W*b queries, exactly what one process holding the global batch
        computes. So no world-size factor appears here.
        """
        batch_size = queries.shape[0]
        if batch_size == 0 or documents.shape[0] % batch_size != 0:
            raise ValueError(
                f"documents must hold (1 + hard negatives) rows per query: got {documents.shape[0]} "
                f"documents for {batch_size} queries"
            )
        if query_keys.shape != (batch_size,) or document_keys.shape != (documents.shape[0],):
            raise ValueError(
                f"query_keys {tuple(query_keys.shape)} / document_keys {tuple(document_keys.shape)} must "
                f"have one key per query ({batch_size}) / per document ({documents.shape[0]})"
            )
        documents_per_query = documents.shape[0] // batch_size
        # NCCL gathers only device tensors; keys often arrive from a CPU collator.
        query_keys = query_keys.to(queries.device)
        document_keys = document_keys.to(queries.device)
        rank = _rank()
        local_rows = torch.arange(batch_size, device=queries.device)

        widths = matryoshka_widths(self.matryoshka_dims, queries.shape[1])

        # Gradient carriers: `queries` and `documents` (this rank's), and through the
        # gather, the gathered copies of every rank's documents/queries. Keys carry none.
        queries = F.normalize(queries, dim=-1)
        documents = F.normalize(documents, dim=-1)
        all_documents = gather_with_grad(documents)
        all_document_keys = _gather_without_grad(document_keys)
        all_queries = gather_with_grad(queries) if self.symmetric else None
        all_query_keys = _gather_without_grad(query_keys) if self.symmetric else None

        # Global index of each local query's positive in the gathered documents, and of each local query.
        positive_index = (rank * batch_size + local_rows) * documents_per_query
        own_query_index = rank * batch_size + local_rows
        positive_keys = document_keys[::documents_per_query]
        losses = []
        for width in widths:
            logits = _prefix(queries, width) @ _prefix(all_documents, width).T / self.temperature
            loss = _cross_entropy_with_duplicates_masked(logits, positive_index, all_document_keys, positive_keys)
            if self.symmetric:
                positives = _prefix(documents[::documents_per_query], width)
                reverse_logits = positives @ _prefix(all_queries, width).T / self.temperature
                reverse_loss = _cross_entropy_with_duplicates_masked(
                    reverse_logits, own_query_index, all_query_keys, query_keys
                )
                # Average of the two directions so the scale matches the one-directional loss.
                loss = (loss + reverse_loss) / 2
            losses.append(loss)
        # Mean over the widths (module docstring): one width (no Matryoshka) is the plain loss.
        return torch.stack(losses).mean()
