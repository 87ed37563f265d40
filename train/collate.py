"""Training examples into contrastive batches, and the one chunker.

A :class:`ContrastiveBatch` keeps prompts uncollated; each forward chunk is collated
(packed or padded) on its own, from prompts grouped by length (:func:`chunk_prompts`),
so a chunk of short texts never pays for the longest text of the batch. It also carries a stable key of every text, which the loss uses to mask
candidates that repeat a row's own positive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from data.formats import TrainingExample
from models.encoder import length_sorted_batches
from models.tokenization import PromptIds
from train.loss import text_key

Tokenize = Callable[[Sequence[str], str, "Sequence[str | None]"], list[PromptIds]]
Collate = Callable[[Sequence[PromptIds]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ContrastiveBatch:
    """One process's queries and their documents, laid out per query as [positive, hard negative 1..k]."""

    queries: list[PromptIds]
    documents: list[PromptIds]
    query_keys: torch.Tensor  # [queries] int64 text_key of each query text
    document_keys: torch.Tensor  # [documents] int64 text_key of each document text
    # The examples of the whole contrastive batch (all processes) as indices into the training
    # data, so a message about the batch can name its rows; () when built outside training.
    rows: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(len(prompt) for prompt in self.queries) + sum(len(prompt) for prompt in self.documents)


def collate_examples(
    examples: Sequence[TrainingExample], tokenize: Tokenize, num_negatives: int, symmetric: bool
) -> ContrastiveBatch:
    """Tokenize queries (query template + their instruction) and documents (document template,
    or the query template with the query's instruction when the dataset is ``symmetric``).
    """
    query_texts = [example.query for example in examples]
    document_texts = [text for example in examples for text in (example.positive, *example.negatives[:num_negatives])]
    instructions = [example.instruction for example in examples]
    document_instructions = [instruction for instruction in instructions for _ in range(1 + num_negatives)]
    return ContrastiveBatch(
        queries=tokenize(query_texts, "query", instructions),
        documents=tokenize(document_texts, "query" if symmetric else "document", document_instructions),
        query_keys=torch.tensor([text_key(text) for text in query_texts]),
        document_keys=torch.tensor([text_key(text) for text in document_texts]),
    )


def chunk_prompts(
    prompts: Sequence[PromptIds], chunk_size: int | None, chunk_tokens: int | None, collate: Collate, *, packed: bool
) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Forward chunks of ``prompts``, grouped by length, and the prompt behind each embedding row.

    Prompts are taken longest first and cut into chunks of at most ``chunk_size`` prompts
    and ``chunk_tokens`` tokens (real tokens when ``packed``, else padded; None: no cap),
    so a padded chunk holds similar lengths and a packed one fills its token budget. The
    embeddings of the chunks, concatenated, are the prompts in the order ``order``:
    ``in_batch_order(rows, order)`` restores the batch's order.
    Raises ValueError when there are no prompts.
    """
    if not prompts:
        raise ValueError("cannot chunk an empty list of prompts")
    chunks = length_sorted_batches([len(prompt) for prompt in prompts], chunk_size, chunk_tokens, packed=packed)
    order = torch.tensor([index for chunk in chunks for index in chunk])
    return [collate([prompts[index] for index in chunk]) for chunk in chunks], order


def in_batch_order(rows: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``rows`` given in chunk order (row i is prompt ``order[i]``), put back in the batch's order."""
    return rows[torch.argsort(order.to(rows.device))]
