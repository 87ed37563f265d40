"""The sentence-transformers side of the training benchmark: one setting, one process, one JSON line.

    python -m evaluation.benchmarks.st_train --model DIR --rows ROWS.jsonl --batch-size 16 --steps 4 \\
        [--mini-batch-size 32] [--max-seq-length 128]

A ``SentenceTransformer`` of the model's ``Transformer`` (capped at ``--max-seq-length``
text tokens) and mean ``Pooling``, LoRA on every linear layer through peft
(``add_adapter``), trained by ``SentenceTransformerTrainer`` with bf16 on (query, positive,
hard negative) columns: ``MultipleNegativesRankingLoss``, or with ``--mini-batch-size``
``CachedMultipleNegativesRankingLoss`` (GradCache in mini-batches of that many texts per
column). Rows are the benchmark's echo-format rows; ST embeds the bare texts (it has no
template), the instruction unused.

Steps are timed from one step's end to the next (data loading and collation included, as
in this project's step time); the first step is warm-up and left out. Real tokens are the
attention-mask sums of the features the loss receives. The last stdout line is the JSON
result; peak memory is this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch

from data.formats import read_examples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.benchmarks.st_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder")
    parser.add_argument("--rows", required=True, help="echo-format JSONL rows (query, positive, negatives)")
    parser.add_argument("--batch-size", type=int, required=True, help="queries per step (the global batch)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps; the first is warm-up")
    parser.add_argument("--mini-batch-size", type=int, default=None, help="CachedMNRL mini-batch (default: plain MNRL)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="text token cap")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--scale", type=float, default=50.0, help="1 / temperature (this project's 0.02)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    # Imported here: the --help of a worker should not pay for them.
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss,
                                                                   MultipleNegativesRankingLoss)
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import TrainerCallback

    rows = read_examples(args.rows, "echo", dataset="bench", num_negatives=1)
    dataset = Dataset.from_dict({"anchor": [row.query for row in rows], "positive": [row.positive for row in rows],
                                 "negative": [row.negatives[0] for row in rows]})
    transformer = Transformer(args.model, max_seq_length=args.max_seq_length)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=args.lora_r, lora_alpha=args.lora_alpha,
                                 lora_dropout=args.lora_dropout, target_modules="all-linear"))
    if args.mini_batch_size is None:
        loss = MultipleNegativesRankingLoss(model, scale=args.scale)
    else:
        loss = CachedMultipleNegativesRankingLoss(model, scale=args.scale, mini_batch_size=args.mini_batch_size)

    step_tokens: list[int] = []
    loss_forward = loss.forward

    def counting_forward(sentence_features, labels, *rest, **kwargs):
        features = list(sentence_features)
        step_tokens.append(int(sum(feature["attention_mask"].sum() for feature in features)))
        return loss_forward(features, labels, *rest, **kwargs)

    loss.forward = counting_forward  # the trainer calls the loss once per step with the whole batch

    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=args.lr, warmup_steps=0, bf16=True, seed=args.seed, dataloader_drop_last=True,
            save_strategy="no", logging_steps=10**9, report_to="none", disable_tqdm=True, max_grad_norm=1.0,
            use_cpu=not torch.cuda.is_available())  # bf16 on CPU: autocast, as this project runs it
        trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss,
                                             callbacks=[StepClock()])
        trainer.train()

    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    seconds = step_ends[-1] - step_ends[0]  # steps 2..N
    timed_steps = len(step_ends) - 1
    tokens = sum(step_tokens[1:len(step_ends)])
    result = {
        "loss": "CachedMultipleNegativesRankingLoss" if args.mini_batch_size else "MultipleNegativesRankingLoss",
        "batch_size": args.batch_size, "mini_batch_size": args.mini_batch_size, "steps": args.steps,
        "timed_steps": timed_steps, "seconds": seconds, "tokens": tokens,
        "examples_per_s": args.batch_size * timed_steps / seconds if timed_steps else None,
        "tokens_per_s": tokens / seconds if timed_steps else None,
        "step_seconds": [end - start for start, end in zip(step_ends, step_ends[1:])],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "trainable_params": trainable, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
