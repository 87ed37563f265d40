"""Prompt templates as data: which pieces a prompt has and which of them are pooled.

A template is a string with up to three placeholders:

* ``{instruction}`` — the task instruction (never pooled);
* ``{text}`` — a copy of the input text that is *not* pooled (echo's first copy);
* ``{pooled_text}`` — the copy of the input text that *is* pooled.

Everything else is literal text. The EOS token is not written in templates: when
pooling is ``last`` and the template set says ``eos_for_last``, tokenization appends
EOS as its own pooled piece (the paper's fine-tuning recipe; for PromptEOL the last
template token is the point, so its set turns this off).

A :class:`TemplateSet` pairs a query template with a document template. Built-in sets
carry the paper's exact wording (PAPER.md); users add their own in YAML::

    my-echo:
      query: "Instruct: {instruction}\\nQuery: {text}\\nQuery again: {pooled_text}"
      document: "Document: {text}\\nDocument again: {pooled_text}"
      default_instruction: "Retrieve semantically similar text"   # optional
      eos_for_last: true                                            # optional
      compute_matched: false                                        # optional

``compute_matched`` is the paper's compute-matched echo ("echo with half the input
length"): the text copies share one text budget, so each copy holds only the first
``ceil(n / copies)`` of the text's ``n`` tokens (and never more than ``max_length`` leaves
each copy). An echo prompt then holds about as many tokens as the classical prompt of the
whole text (the templates' own tokens and one token of rounding apart), so both cost about
the same; the price is that the pooled copy sees only the first half of the text. A
template with one text copy is unchanged by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from echo_base import BadInputError, read_yaml_mapping

PieceKind = Literal["literal", "instruction", "text", "pooled_text"]
_PLACEHOLDER = re.compile(r"\{(instruction|text|pooled_text)\}")


@dataclass(frozen=True)
class Piece:
    """One piece of a prompt; ``literal`` holds the text of literal pieces only."""

    kind: PieceKind
    literal: str = ""


@dataclass(frozen=True)
class Template:
    """A parsed template string: an ordered tuple of pieces."""

    source: str
    pieces: tuple[Piece, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Parse a template string; raises BadInputError unless it pools exactly one text copy."""
        pieces: list[Piece] = []
        position = 0
        for match in _PLACEHOLDER.finditer(source):
            if match.start() > position:
                pieces.append(Piece("literal", source[position : match.start()]))
            pieces.append(Piece(match.group(1)))  # type: ignore[arg-type]
            position = match.end()
        if position < len(source):
            pieces.append(Piece("literal", source[position:]))
        kinds = [piece.kind for piece in pieces]
        if kinds.count("pooled_text") != 1:
            raise BadInputError(f"template {source!r} must contain {{pooled_text}} exactly once")
        if kinds.count("instruction") > 1:
            raise BadInputError(f"template {source!r} contains {{instruction}} more than once")
        leftover = re.search(r"\{[A-Za-z_]*\}", _PLACEHOLDER.sub("", source))
        if leftover:
            raise BadInputError(
                f"template {source!r} has unknown placeholder {leftover.group(0)}; "
                "use {instruction}, {text} or {pooled_text}"
            )
        return cls(source, tuple(pieces))

    @property
    def takes_instruction(self) -> bool:
        return any(piece.kind == "instruction" for piece in self.pieces)

    @property
    def text_copies(self) -> int:
        return sum(piece.kind in ("text", "pooled_text") for piece in self.pieces)

    def render(self, text: str, instruction: str | None = None) -> str:
        """The prompt as one string, for display and logging (tokenization never uses it)."""
        values = {"instruction": instruction or "", "text": text, "pooled_text": text}
        return "".join(piece.literal if piece.kind == "literal" else values[piece.kind] for piece in self.pieces)


@dataclass(frozen=True)
class TemplateSet:
    """The query and document templates of one prompting scheme (echo, classical, PromptEOL, ...)."""

    name: str
    query: Template
    document: Template
    default_instruction: str | None = None
    eos_for_last: bool = True
    compute_matched: bool = False  # the copies share one text budget (module doc)

    def for_kind(self, kind: str) -> Template:
        if kind == "query":
            return self.query
        if kind == "document":
            return self.document
        raise BadInputError(f"kind must be 'query' or 'document', got {kind!r}")

    def to_dict(self) -> dict:
        """Plain data for echo_config.json; :func:`template_set_from_dict` reads it back."""
        return {
            "name": self.name,
            "query": self.query.source,
            "document": self.document.source,
            "default_instruction": self.default_instruction,
            "eos_for_last": self.eos_for_last,
            "compute_matched": self.compute_matched,
        }


def template_set_from_dict(name: str, spec: dict) -> TemplateSet:
    """Build a set from YAML/JSON data; raises BadInputError naming the set and the bad key."""
    allowed = {"name", "query", "document", "default_instruction", "eos_for_last", "compute_matched"}
    unknown = set(spec) - allowed
    if unknown:
        raise BadInputError(f"template set {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("query", "document"):
        if not isinstance(spec.get(key), str):
            raise BadInputError(f"template set {name!r}: {key!r} must be a template string")
    try:
        query, document = Template.parse(spec["query"]), Template.parse(spec["document"])
    except ValueError as error:
        raise BadInputError(f"template set {name!r}: {error}") from None
    flags = {key: spec.get(key, default) for key, default in (("eos_for_last", True), ("compute_matched", False))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise BadInputError(f"template set {name!r}: {key!r} must be true or false")
    return TemplateSet(name, query, document, spec.get("default_instruction"), **flags)


# The paper's wording (PAPER.md, "Prompts in the paper"). Zero-shot sets use the same
# template for both sides; the fine-tuning sets follow E5's instruction format. The
# *_compute_matched sets are echo's templates with the text budget shared by the copies.
# echo_rewrite_instruct is this project's: E5's instruction with the zero-shot "rewrite"
# wording. Asking for a rewrite makes the model carry the whole meaning into the second copy;
# zero-shot it keeps more of the end of a text (toy S2 0.903 against 0.837 for echo_instruct
# on SmolLM2), and fine-tuned it scores higher (README, "The default recipe").
_FINETUNE_SYMMETRIC = "Retrieve semantically similar text"
_ECHO_ZERO_SHOT = "Rewrite the following paragraph: {text}. The rewritten paragraph: {pooled_text}"
_ECHO_INSTRUCT_QUERY = "Instruct: {instruction}\nQuery: {text}\nQuery again: {pooled_text}"
_ECHO_INSTRUCT_DOCUMENT = "Document: {text}\nDocument again: {pooled_text}"
_ECHO_REWRITE_QUERY = "Instruct: {instruction}\nRewrite the following query: {text}\nThe rewritten query: {pooled_text}"
_ECHO_REWRITE_DOCUMENT = "Rewrite the following document: {text}\nThe rewritten document: {pooled_text}"
BUILTIN_TEMPLATE_SETS: dict[str, TemplateSet] = {
    spec["name"]: template_set_from_dict(spec["name"], spec)
    for spec in [
        {"name": "echo", "query": _ECHO_ZERO_SHOT, "document": _ECHO_ZERO_SHOT},
        {"name": "echo_compute_matched", "query": _ECHO_ZERO_SHOT, "document": _ECHO_ZERO_SHOT, "compute_matched": True},
        {"name": "classical", "query": "Write a paragraph: {pooled_text}", "document": "Write a paragraph: {pooled_text}"},
        {
            "name": "prompteol",
            "query": 'This sentence : "{pooled_text}" means in one word:"',
            "document": 'This sentence : "{pooled_text}" means in one word:"',
            "eos_for_last": False,
        },
        {
            "name": "echo_sentence",
            "query": "Rewrite the following sentence: {text}. The rewritten sentence: {pooled_text}",
            "document": "Rewrite the following sentence: {text}. The rewritten sentence: {pooled_text}",
        },
        {"name": "classical_sentence", "query": "Write a sentence: {pooled_text}", "document": "Write a sentence: {pooled_text}"},
        {
            "name": "echo_instruct",
            "query": _ECHO_INSTRUCT_QUERY,
            "document": _ECHO_INSTRUCT_DOCUMENT,
            "default_instruction": _FINETUNE_SYMMETRIC,
        },
        {
            "name": "echo_instruct_compute_matched",
            "query": _ECHO_INSTRUCT_QUERY,
            "document": _ECHO_INSTRUCT_DOCUMENT,
            "default_instruction": _FINETUNE_SYMMETRIC,
            "compute_matched": True,
        },
        {
            "name": "echo_rewrite_instruct",
            "query": _ECHO_REWRITE_QUERY,
            "document": _ECHO_REWRITE_DOCUMENT,
            "default_instruction": _FINETUNE_SYMMETRIC,
        },
        {
            "name": "classical_instruct",
            "query": "Instruct: {instruction}\nQuery: {pooled_text}",
            "document": "Document: {pooled_text}",
            "default_instruction": _FINETUNE_SYMMETRIC,
        },
    ]
}


def load_template_sets(path: str | Path) -> dict[str, TemplateSet]:
    """Read user template sets from a YAML file mapping set name -> spec."""
    raw = read_yaml_mapping(path, "template file (set name -> {query, document} spec)")
    sets = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise BadInputError(f"{path}: template set {name!r} must be a mapping")
        try:
            sets[name] = template_set_from_dict(name, {**spec, "name": name})
        except ValueError as error:
            raise BadInputError(f"{path}: {error}") from None
    return sets


def get_template_set(name: str, template_file: str | Path | None = None) -> TemplateSet:
    """A built-in set by name, or one from ``template_file``; raises BadInputError listing the choices."""
    available = dict(BUILTIN_TEMPLATE_SETS)
    if template_file is not None:
        available.update(load_template_sets(template_file))
    if name not in available:
        raise BadInputError(f"unknown template set {name!r}; choose one of {sorted(available)}")
    return available[name]


__all__ = ["Piece", "Template", "TemplateSet", "BUILTIN_TEMPLATE_SETS", "get_template_set", "load_template_sets",
           "template_set_from_dict"]
