"""Collation of training examples into prompt batches for the contrastive loss.

A batch keeps prompts unpadded; each GradCache chunk is padded on its own, so a chunk of
short texts never pays for the longest text of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from data.formats import TrainingExample
from models.tokenization import PromptIds

Tokenize = Callable[[Sequence[str], str, "str | None"], list[PromptIds]]


@dataclass(frozen=True)
class ContrastiveBatch:
    """Queries and their passages, laid out per query as [positive, hard negative 1..k]."""

    queries: list[PromptIds]
    passages: list[PromptIds]
    query_texts: list[str]
    passage_texts: list[str]

    @property
    def num_tokens(self) -> int:
        return sum(len(prompt) for prompt in self.queries) + sum(len(prompt) for prompt in self.passages)


def collate_examples(
    examples: Sequence[TrainingExample], tokenize: Tokenize, num_negatives: int, symmetric: bool
) -> ContrastiveBatch:
    """Tokenize queries (query template + instruction) and passages (document template,
    or the query template with the same instruction when the dataset is ``symmetric``)."""
    query_texts = [example.query for example in examples]
    passage_texts = [text for example in examples for text in (example.positive, *example.negatives[:num_negatives])]
    instructions = [example.instruction for example in examples]
    passage_instructions = [instruction for instruction in instructions for _ in range(1 + num_negatives)]
    passage_kind = "query" if symmetric else "document"
    return ContrastiveBatch(
        queries=_tokenize_grouped(tokenize, query_texts, "query", instructions),
        passages=_tokenize_grouped(tokenize, passage_texts, passage_kind, passage_instructions),
        query_texts=query_texts,
        passage_texts=passage_texts,
    )


def _tokenize_grouped(tokenize: Tokenize, texts: list[str], kind: str, instructions: list[str | None]) -> list[PromptIds]:
    """Tokenize in one call per distinct instruction (a batch usually has one), keeping order."""
    prompts: list[PromptIds | None] = [None] * len(texts)
    for instruction in dict.fromkeys(instructions):
        rows = [row for row, value in enumerate(instructions) if value == instruction]
        for row, prompt in zip(rows, tokenize([texts[row] for row in rows], kind, instruction)):
            prompts[row] = prompt
    return prompts  # type: ignore[return-value]


def pad_in_chunks(
    prompts: Sequence[PromptIds], chunk_size: int | None, pad: Callable[[Sequence[PromptIds]], dict[str, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """Padded tensors per chunk of ``chunk_size`` prompts (one chunk when None); the last may be smaller."""
    size = chunk_size or len(prompts)
    return [pad(prompts[start : start + size]) for start in range(0, len(prompts), size)]
