"""Encoding throughput: tokens/s per mode, and echo's wall time relative to classical.

    python -m evaluation.benchmarks.encode_throughput --model smollm2-135m-instruct --texts 256

Echo feeds every text twice, so twice classical's tokens is its floor; attention grows
quadratically with length, so the ratio can exceed 2 on long texts. Texts come from the
prepared evaluation corpora (real text of mixed lengths). Prints one row per mode.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from data.prepare import prepare_eval_tasks
from evaluation.cli import add_renamed_flag, parse_list
from models import EchoEncoder


def corpus_texts(count: int) -> list[str]:
    """The first ``count`` documents of the prepared retrieval corpora, in a fixed order."""
    texts: list[str] = []
    for name, folder in sorted(prepare_eval_tasks().items()):
        corpus = folder / "corpus.jsonl"
        if corpus.is_file():
            texts += [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    return texts[:count]


def measure(encoder: EchoEncoder, texts: list[str], batch_size: int, repeats: int) -> dict[str, float]:
    prompts = encoder.tokenize(texts, "document")
    tokens = sum(len(prompt) for prompt in prompts)
    encoder.encode(texts[:batch_size], kind="document", batch_size=batch_size)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts, kind="document", batch_size=batch_size, show_progress=False)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"tokens": tokens, "seconds": best, "tokens_per_s": tokens / best, "texts_per_s": len(texts) / best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.benchmarks.encode_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: float32 weights + bf16 autocast")
    add_renamed_flag(parser, "--template-sets", "--modes", default="classical,echo",
                     help="comma-separated template sets to time")
    args = parser.parse_args(argv)

    texts = corpus_texts(args.texts)
    base = EchoEncoder.from_pretrained(args.model, dtype=args.dtype)
    print(f"model={args.model} texts={len(texts)} batch_size={args.batch_size} dtype={args.dtype or 'fp32+bf16 autocast'} "
          f"threads={torch.get_num_threads()} device={base.device}")
    print(f"| template set | tokens | seconds | tokens/s | texts/s |\n|---|---|---|---|---|")
    results = {}
    for template_set in parse_list(args.template_sets, "--template-sets"):
        results[template_set] = measure(base.with_templates(template_set), texts, args.batch_size, args.repeats)
        r = results[template_set]
        print(f"| {template_set} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['texts_per_s']:.1f} |")
    if "echo" in results and "classical" in results:
        print(f"echo / classical: wall time x{results['echo']['seconds'] / results['classical']['seconds']:.2f}, "
              f"tokens x{results['echo']['tokens'] / results['classical']['tokens']:.2f}")


if __name__ == "__main__":
    main()
