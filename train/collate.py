"""Training examples into contrastive batches, and the one chunker.

A :class:`ContrastiveBatch` keeps prompts unpadded; each forward chunk is padded on its
own (:func:`pad_in_chunks`), so a chunk of short texts never pays for the longest text
of the batch. It also carries a stable key of every text, which the loss uses to mask
candidates that repeat a row's own positive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from data.formats import TrainingExample
from models.tokenization import PromptIds
from train.loss import text_key

Tokenize = Callable[[Sequence[str], str, "Sequence[str | None]"], list[PromptIds]]
Pad = Callable[[Sequence[PromptIds]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ContrastiveBatch:
    """One process's queries and their documents, laid out per query as [positive, hard negative 1..k]."""

    queries: list[PromptIds]
    documents: list[PromptIds]
    query_keys: torch.Tensor  # [queries] int64 text_key of each query text
    document_keys: torch.Tensor  # [documents] int64 text_key of each document text

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


def pad_in_chunks(prompts: Sequence[PromptIds], chunk_size: int | None, pad: Pad) -> list[dict[str, torch.Tensor]]:
    """Padded tensors per chunk of ``chunk_size`` prompts (one chunk when None); the last may be smaller.

    Raises ValueError when there are no prompts or ``chunk_size`` < 1.
    """
    if not prompts:
        raise ValueError("cannot chunk an empty list of prompts")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    size = chunk_size or len(prompts)
    return [pad(prompts[start : start + size]) for start in range(0, len(prompts), size)]
