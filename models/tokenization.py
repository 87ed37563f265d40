"""Tokenization of prompts into ids with the pooled span known by construction.

Each template piece is tokenized on its own and the ids are concatenated (as in the
paper's released parser), so the pooled positions are exactly the tokens of the
``{pooled_text}`` piece (plus an appended EOS) — never found by searching a joined
string, where BPE merges across piece boundaries would shift them.

Two details make separately tokenized pieces read like natural text:

* A literal's trailing space belongs to the next piece. Byte-level BPE tokenizers
  (GPT-2, Llama-3, SmolLM) mark a word's leading space inside the word's token
  ("ĠHello"), so the space is moved onto the text before tokenizing it. SentencePiece
  tokenizers (Llama-2, Mistral) already prepend a word boundary to every separately
  tokenized piece, so there the space is simply dropped.
* Truncation is per text: the text is tokenized once, cut to the token budget left by
  the template, and the same ids fill every copy, so echo's two copies stay identical
  and the pooled copy is never the one that gets cut. A ``compute_matched`` template set
  also cuts each copy to ``ceil(n / copies)`` of the text's ``n`` tokens, so echo's
  copies together hold about the text once (:mod:`models.templates`).

BOS is added exactly as the tokenizer's own ``add_special_tokens=True`` would add it
(SmolLM2 adds none, Llama adds ``<s>``); EOS is the tokenizer's ``eos_token_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase

from echo_base import BadInputError
from models.templates import Template, TemplateSet


@dataclass(frozen=True)
class PromptIds:
    """One tokenized prompt: ids and a 0/1 mask of the positions that are pooled."""

    input_ids: tuple[int, ...]
    pooled_mask: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptTokenizer:
    """Turns texts into :class:`PromptIds` for one template set, pooling rule and length budget.

    ``max_length`` bounds the whole prompt (template, every copy of the text and EOS);
    ``None`` means the model's own limit, passed by the encoder.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        templates: TemplateSet,
        *,
        append_eos: bool,
        max_length: int | None,
    ) -> None:
        if append_eos and tokenizer.eos_token_id is None:
            raise BadInputError("last-token pooling appends EOS, but the tokenizer defines no eos_token")
        self.tokenizer = tokenizer
        self.templates = templates
        self.append_eos = append_eos
        self.max_length = max_length
        self._literal_cache: dict[str, list[int]] = {}

    # -- tokenizer facts, probed once ------------------------------------------------
    @cached_property
    def _adds_word_boundary(self) -> bool:
        """True for SentencePiece-style tokenizers that prefix every piece with a word boundary."""
        return self._ids("a") == self._ids(" a")

    @cached_property
    def _special_prefix(self) -> list[int]:
        """The ids the tokenizer itself puts before a text (BOS for Llama, nothing for SmolLM2)."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        without = self._ids("a")
        start = next(i for i in range(len(with_special)) if with_special[i : i + len(without)] == without)
        return list(with_special[:start])

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _literal_ids(self, text: str) -> list[int]:
        if text not in self._literal_cache:
            self._literal_cache[text] = self._ids(text) if text else []
        return self._literal_cache[text]

    # -- the prompt ----------------------------------------------------------------------
    def __call__(
        self, texts: Sequence[str], kind: str, instruction: str | Sequence[str | None] | None = None
    ) -> list[PromptIds]:
        """Tokenize ``texts`` as ``kind`` ('query' or 'document') prompts.

        ``instruction`` is one instruction for all texts, or a list with one per text (a
        batch mixing datasets); the template's fixed pieces are tokenized once per
        distinct instruction. Raises BadInputError when the template needs an instruction
        and none is given or defaulted, when the list's length differs from the texts',
        or when ``max_length`` leaves no room for the text.
        """
        if instruction is None or isinstance(instruction, str):
            instructions: Sequence[str | None] = [instruction] * len(texts)
        elif len(instruction) != len(texts):
            raise BadInputError(f"got {len(instruction)} instructions for {len(texts)} texts; give one per text or one for all")
        else:
            instructions = instruction
        template = self.templates.for_kind(kind)
        layouts = {value: self._layout(template, kind, value) for value in dict.fromkeys(instructions)}
        space = " " if _text_follows_space(template) and not self._adds_word_boundary else ""
        text_ids = self.tokenizer([space + text for text in texts], add_special_tokens=False)["input_ids"]

        eos = [self.tokenizer.eos_token_id] if self.append_eos else []
        prompts = []
        for ids, value in zip(text_ids, instructions):
            pieces, budget = layouts[value]
            ids = list(ids[: self._copy_length(len(ids), budget, template)])
            input_ids, pooled_mask = list(self._special_prefix), [0] * len(self._special_prefix)
            for piece_ids, pooled in pieces:
                piece_ids = ids if piece_ids is None else piece_ids
                input_ids += piece_ids
                pooled_mask += [int(pooled)] * len(piece_ids)
            input_ids += eos
            pooled_mask += [1] * len(eos)
            prompts.append(PromptIds(tuple(input_ids), tuple(pooled_mask)))
        return prompts

    def _copy_length(self, text_length: int, budget: int | None, template: Template) -> int:
        """How many of a text's tokens every copy holds: all, or its share under ``compute_matched``, within ``budget``."""
        length = -(-text_length // template.text_copies) if self.templates.compute_matched else text_length
        return length if budget is None else min(length, budget)

    def _layout(self, template: Template, kind: str, instruction: str | None) -> tuple[list[tuple[list[int] | None, bool]], int | None]:
        """The fixed pieces' ids for one instruction, and the token budget left for each text copy."""
        if template.takes_instruction:
            instruction = instruction or self.templates.default_instruction
            if not instruction:
                raise BadInputError(f"the {kind} template of template set {self.templates.name!r} needs an instruction")
        pieces = self._piece_ids(template, instruction or "")
        if self.max_length is None:
            return pieces, None
        fixed_length = len(self._special_prefix) + sum(len(ids) for ids, _ in pieces if ids is not None) + int(self.append_eos)
        # Every copy gets the same number of tokens, so the copies stay identical.
        budget = (self.max_length - fixed_length) // template.text_copies
        if budget < 1:
            raise BadInputError(f"max_length={self.max_length} leaves no room for text in template set {self.templates.name!r}")
        return pieces, budget

    def _piece_ids(self, template: Template, instruction: str) -> list[tuple[list[int] | None, bool]]:
        """Ids of each fixed piece (None for a text copy) with its pooled flag.

        A literal's trailing space moves onto the piece after it (see the module doc).
        """
        word_space = "" if self._adds_word_boundary else " "
        pieces: list[tuple[list[int] | None, bool]] = []
        carry_space = False
        for piece in template.pieces:
            if piece.kind == "literal":
                carry_space = piece.literal.endswith(" ")
                pieces.append((self._literal_ids(piece.literal.rstrip(" ")), False))
                continue
            if piece.kind == "instruction":
                pieces.append((self._literal_ids((word_space if carry_space else "") + instruction), False))
            else:
                pieces.append((None, piece.kind == "pooled_text"))
            carry_space = False
        return pieces


def _text_follows_space(template: Template) -> bool:
    """Whether the pooled text copy follows a literal ending in a space.

    All text copies take the pooled copy's spacing, so their ids are identical.
    """
    previous = None
    for piece in template.pieces:
        if piece.kind == "pooled_text":
            return previous is not None and previous.kind == "literal" and previous.literal.endswith(" ")
        previous = piece
    return False


def pad_prompts(prompts: Sequence[PromptIds], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad prompts into ``input_ids``, ``attention_mask``, ``pooled_mask`` and ``position_ids`` tensors.

    Positions count real tokens only, so a prompt gets the same positions under left and
    right padding (Hugging Face models otherwise number left padding too).
    """
    if padding_side not in ("left", "right"):
        raise BadInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    pooled_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        span = slice(0, len(prompt)) if padding_side == "right" else slice(width - len(prompt), width)
        input_ids[row, span] = torch.tensor(prompt.input_ids)
        attention_mask[row, span] = 1
        pooled_mask[row, span] = torch.tensor(prompt.pooled_mask)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pooled_mask": pooled_mask,
            "position_ids": position_ids}
