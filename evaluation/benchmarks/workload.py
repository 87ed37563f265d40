"""What the benchmark measures on: fixed training rows, the text token cap, and texts to encode.

Both sides of every comparison see the same texts under the same cap on *text* tokens.
sentence-transformers caps the text itself (``max_seq_length``); this project's
``model.max_length`` caps the whole prompt (template + every text copy,
:class:`models.tokenization.PromptTokenizer`), so :func:`prompt_max_length` gives the
prompt cap that leaves a template set the same text budget per copy. The rows' texts are
cut to the cap once, here, so neither side truncates further and both embed the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from data.formats import read_examples
from data.prepare import prepare_eval_tasks, prepare_training_mix
from data.sources.brown import genre_documents
from data.sources.text import truncate_words
from echo_base import BadInputError, iter_jsonl
from models.templates import TemplateSet
from models.tokenization import PromptTokenizer

TEXT_TOKENS = 128  # the text token cap of every training comparison
SHORT_TEXT_WORDS = 64  # short texts to encode have at most this many words ...
LONG_DOC_WORDS = 600  # ... long documents this many (Brown documents, about 2,000 words, cut)


def cut_to_tokens(tokenizer: PreTrainedTokenizerBase, text: str, tokens: int) -> str:
    """``text`` cut to its first ``tokens`` tokens (decoded back to text); shorter texts unchanged."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= tokens else tokenizer.decode(ids[:tokens])


def bench_rows(tokenizer: PreTrainedTokenizerBase, count: int, text_tokens: int = TEXT_TOKENS) -> list[dict[str, Any]]:
    """``count`` fixed rows (query, positive, one hard negative, instruction) of the default training mix.

    The first rows of each dataset of the mix, taken in turn, so every dataset (and its
    instruction and text lengths) is equally present; every text is cut to ``text_tokens``
    tokens. The rows name no dataset, so a run reading them draws its batches from all.
    """
    files = sorted((prepare_training_mix("default") / "train").glob("*.jsonl"))
    per_dataset = [read_examples(path, "echo", dataset=path.stem, num_negatives=1) for path in files]
    rows = []
    for index in range(count):
        example = per_dataset[index % len(files)][index // len(files)]
        rows.append({"query": cut_to_tokens(tokenizer, example.query, text_tokens),
                     "positive": cut_to_tokens(tokenizer, example.positive, text_tokens),
                     "negatives": [cut_to_tokens(tokenizer, example.negatives[0], text_tokens)],
                     "instruction": example.instruction})
    return rows


def prompt_max_length(tokenizer: PreTrainedTokenizerBase, templates: TemplateSet, text_tokens: int,
                      instructions: Iterable[str | None], kinds: Sequence[str] = ("query", "document")) -> int:
    """The smallest prompt cap (``model.max_length``) that leaves every text copy ``text_tokens`` tokens.

    The prompt of every kind in ``kinds`` under every instruction is measured; the cap is
    that of the longest template: fixed tokens + copies x ``text_tokens``. Prompts
    with a shorter template get a larger budget, which texts already cut to
    ``text_tokens`` (:func:`bench_rows`) never use. Mean pooling: no EOS is appended.
    """
    probe = PromptTokenizer(tokenizer, templates, append_eos=False, max_length=None)
    needed = 0
    instructions = list(dict.fromkeys(instructions))
    for kind in kinds:
        copies = templates.for_kind(kind).text_copies
        for instruction in instructions:
            prompt = probe(["x"], kind, instruction)[0]
            # Uncapped, the pooled span is exactly one copy of the text: the rest is template.
            fixed = len(prompt) - copies * sum(prompt.pooled_mask)
            needed = max(needed, fixed + copies * text_tokens)
    return needed


def row_prompt_lengths(prompt_tokenizer: PromptTokenizer, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Token lengths of every prompt a training step embeds for ``rows``: each query, positive and negative."""
    instructions = [row["instruction"] for row in rows]
    documents = [text for row in rows for text in (row["positive"], *row["negatives"])]
    document_instructions = [row["instruction"] for row in rows for _ in range(1 + len(row["negatives"]))]
    prompts = (prompt_tokenizer([row["query"] for row in rows], "query", instructions)
               + prompt_tokenizer(documents, "document", document_instructions))
    return [len(prompt) for prompt in prompts]


def short_texts(count: int, max_words: int = SHORT_TEXT_WORDS) -> list[str]:
    """``count`` texts of at most ``max_words`` words from the prepared retrieval corpora, taken in turn."""
    corpora = [[row["text"] for _, row in iter_jsonl(folder / "corpus.jsonl") if len(row["text"].split()) <= max_words]
               for _, folder in sorted(prepare_eval_tasks().items()) if (folder / "corpus.jsonl").is_file()]
    texts = [text for group in zip(*corpora) for text in group][:count]
    if len(texts) < count:
        raise BadInputError(f"the prepared corpora hold {len(texts)} texts of at most {max_words} words, {count} asked")
    return texts


def long_documents(count: int, words: int = LONG_DOC_WORDS) -> list[str]:
    """``count`` Brown corpus documents, one per genre in turn, each cut to ``words`` words."""
    by_genre: dict[str, list[str]] = {}
    for document in genre_documents():
        by_genre.setdefault(document["label"], []).append(truncate_words(document["text"], words))
    return [text for group in zip(*by_genre.values()) for text in group][:count]
