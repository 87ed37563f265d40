"""The encoding side of the benchmark: one process, one JSON line.

    python -m evaluation.benchmarks.encoding --model NAME --texts TEXTS.json [--batch-size 32] [--repeats 2]

``TEXTS.json`` holds ``{"short": [...], "long": [...]}``. Measured on each group, as
documents, best of ``--repeats`` passes after a warm-up batch:

* echo vs classical (``echo_instruct`` / ``classical_instruct``) through
  ``EchoEncoder.from_pretrained(model)`` with its default prompt cap, as a user gets it;
* this project's classical encoder vs sentence-transformers' ``encode`` (the model's
  ``Transformer`` and mean ``Pooling``) on the same texts, under the same cap on *text*
  tokens (``--short-cap`` / ``--long-cap``; the project's prompt cap leaves the text that
  many tokens) and batch size. Both keep float32 weights and run under bf16 autocast.

Tokens are real (non-pad) tokens: the prompts' for this project, the capped texts' for ST.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from evaluation.benchmarks.workload import prompt_max_length
from models import EchoEncoder
from models.registry import resolve_model
from models.templates import get_template_set

ECHO, CLASSICAL = "echo_instruct", "classical_instruct"


def timed(encode: Callable[[Sequence[str]], object], texts: Sequence[str], tokens: int, batch_size: int,
          repeats: int) -> dict[str, float]:
    """Best wall time of ``repeats`` calls of ``encode(texts)``, after one warm-up batch; rates from ``tokens``."""
    encode(texts[:batch_size])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return {"texts": len(texts), "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best,
            "texts_per_s": len(texts) / best}


def measure_project(encoder: EchoEncoder, texts: Sequence[str], batch_size: int, repeats: int) -> dict[str, float]:
    tokens = sum(len(prompt) for prompt in encoder.tokenize(texts, "document"))
    result = timed(lambda batch: encoder.encode(batch, kind="document", batch_size=batch_size, show_progress=False),
                   texts, tokens, batch_size, repeats)
    return {**result, "max_length": encoder.prompt_tokenizer.max_length}


def measure_sentence_transformers(model, texts: Sequence[str], batch_size: int, repeats: int) -> dict[str, float]:
    tokenizer = model[0].tokenizer
    cap = model.max_seq_length
    tokens = sum(len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=cap)["input_ids"])
    device_type = model.device.type

    def encode(batch: Sequence[str]):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return model.encode(list(batch), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)

    return {**timed(encode, texts, tokens, batch_size, repeats), "text_cap": cap}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.benchmarks.encoding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True, help='JSON file: {"short": [...], "long": [...]}')
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--short-cap", type=int, default=128, help="text tokens, project vs ST on short texts")
    parser.add_argument("--long-cap", type=int, default=512, help="text tokens, project vs ST on long documents")
    args = parser.parse_args(argv)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    echo = EchoEncoder.from_pretrained(args.model, mode=ECHO)
    classical = echo.with_templates(CLASSICAL)
    result: dict = {"default_max_length": echo.prompt_tokenizer.max_length, "batch_size": args.batch_size,
                    "repeats": args.repeats, "threads": torch.get_num_threads()}
    for group in ("short", "long"):
        result[group] = {template_set: measure_project(encoder, texts[group], args.batch_size, args.repeats)
                         for template_set, encoder in ((ECHO, echo), (CLASSICAL, classical))}
        print(json.dumps({group: result[group]}), flush=True)

    path = resolve_model(args.model)
    templates = get_template_set(CLASSICAL)
    for group, cap in (("short", args.short_cap), ("long", args.long_cap)):
        capped = EchoEncoder(echo.model, echo.tokenizer, templates, pooling="mean",
                             max_length=prompt_max_length(echo.tokenizer, templates, cap, [None], kinds=["document"]),
                             autocast_dtype=echo.autocast_dtype)
        transformer = Transformer(path, max_seq_length=cap)
        st_model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                       device=str(echo.device))
        result[f"vs_st_{group}"] = {
            "text_cap": cap,
            "project_classical": measure_project(capped, texts[group], args.batch_size, args.repeats),
            "sentence_transformers": measure_sentence_transformers(st_model, texts[group], args.batch_size, args.repeats),
        }
        print(json.dumps({f"vs_st_{group}": result[f"vs_st_{group}"]}), flush=True)
        del st_model, transformer
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
