"""Run any MTEB task or benchmark with an :class:`models.EchoEncoder` (needs the ``mteb`` extra).

:class:`MTEBEchoEncoder` implements mteb's encoder protocol. Instructions follow E5-mistral
and the paper: queries (and both sides of symmetric tasks) get ``kind="query"`` with the
task's instruction; retrieval and reranking documents get ``kind="document"`` and none.
The instruction for a task is, first found: the caller's override, :data:`TASK_INSTRUCTIONS`
by task name, the E5-style query prompt mteb's task metadata carries (mteb copied E5-mistral's
per-task instructions there), then :data:`TYPE_INSTRUCTIONS` by task type.
Results land in mteb's own format under ``<out>/results/<model>/<revision>/<mode,pooling>/``
(``mode`` there is the template set's old name, kept so earlier results stay side by side).
``dim`` (``--dim``) scores the first N dimensions of each embedding, re-normalised
(``EchoEncoder.encode(..., dim=N)``, for Matryoshka models); the folder then names it too.

    python -m evaluation.mteb_adapter --model smollm2-135m-instruct --template-set echo --pooling mean \\
        --tasks STS12,SciFact --out results/mteb        # or --benchmark "MTEB(eng, v1)"

mteb fetches task data from the Hugging Face hub; offline, only tasks whose data is already
in the ``datasets`` cache (or tasks defined in code) run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from evaluation.cli import add_renamed_flag
from models.pooling import POOLINGS

# E5-mistral instructions for tasks whose mteb metadata carries none.
TASK_INSTRUCTIONS: dict[str, str] = {
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
    "CQADupstackRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange that are "
    "duplicates to the given question",
}
# Fallbacks by mteb task type, worded in the E5 style.
TYPE_INSTRUCTIONS: dict[str, str] = {
    "STS": "Retrieve semantically similar text",
    "PairClassification": "Retrieve semantically similar text",
    "BitextMining": "Retrieve parallel sentences",
    "Classification": "Classify the given text into its category",
    "MultilabelClassification": "Classify the given text into its categories",
    "Clustering": "Identify the topic or theme of the given texts",
    "Retrieval": "Given a query, retrieve relevant documents that answer the query",
    "Reranking": "Given a query, retrieve relevant documents that answer the query",
    "InstructionRetrieval": "Given a query, retrieve relevant documents that answer the query",
    "InstructionReranking": "Given a query, retrieve relevant documents that answer the query",
    "Summarization": "Given a news summary, retrieve other semantically similar summaries",
    "Regression": "Retrieve semantically similar text",
}


def task_instruction(task_metadata: TaskMetadata, overrides: dict[str, str] | None = None) -> str:
    """The query-side instruction for an mteb task (see the module docstring for the order)."""
    name = task_metadata.name
    if overrides and name in overrides:
        return overrides[name]
    if name in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[name]
    prompt = task_metadata.prompt
    if isinstance(prompt, dict):
        prompt = prompt.get(PromptType.query.value)
    if isinstance(prompt, str) and prompt.strip():
        return prompt.strip()
    if task_metadata.type in TYPE_INSTRUCTIONS:
        return TYPE_INSTRUCTIONS[task_metadata.type]
    raise ValueError(f"no instruction for mteb task {name!r} of type {task_metadata.type!r}; pass one in overrides")


class MTEBEchoEncoder(AbsEncoder):
    """mteb's encoder protocol over an EchoEncoder (anything with ``encode(texts, kind, instruction, batch_size)``)."""

    def __init__(self, encoder: Any, model_name: str, instruction_overrides: dict[str, str] | None = None,
                 dim: int | None = None) -> None:
        self.model = encoder
        self.instruction_overrides = instruction_overrides or {}
        self.dim = dim
        hidden_size = getattr(getattr(getattr(encoder, "model", None), "config", None), "hidden_size", None)
        # These name the result folders of one model's settings; the template set keeps its
        # old key "mode" there so results written before the rename stay comparable.
        settings = {"mode": encoder.template_set, "pooling": encoder.pooling, **({"dim": dim} if dim else {})}
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": f"echo-embeddings/{Path(model_name.rstrip('/')).name}",
                "revision": "local",
                "embed_dim": dim or hidden_size,
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": True,
                "framework": ["PyTorch"],
                "experiment_kwargs": settings,
            }
        )

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of mteb's DataLoader: documents plainly, everything else as an instructed query."""
        texts = [text for batch in inputs for text in batch["text"]]
        if prompt_type == PromptType.document:
            kind, instruction = "document", None
        else:
            kind, instruction = "query", task_instruction(task_metadata, self.instruction_overrides)
        width = {"dim": self.dim} if self.dim else {}  # an encoder without Matryoshka needs no dim argument
        return self.model.encode(texts, kind=kind, instruction=instruction, batch_size=kwargs.get("batch_size", 32),
                                 **width)


def run_mteb(encoder: Any, model_name: str, tasks: list, out_dir: Path, batch_size: int = 32,
             dim: int | None = None) -> list:
    """Evaluate ``encoder`` (at the first ``dim`` dimensions, if given) on mteb ``tasks``; results are
    written in mteb's format under ``out_dir``."""
    import mteb

    wrapped = MTEBEchoEncoder(encoder, model_name, dim=dim)
    result = mteb.evaluate(
        wrapped,
        tasks,
        cache=mteb.ResultCache(cache_path=out_dir),
        encode_kwargs={"batch_size": batch_size},
        overwrite_strategy="always",
        show_progress_bar=False,
    )
    return result.task_results


def main(argv: list[str] | None = None) -> int:
    """Command line: one (template set, pooling) of one model on mteb tasks or a benchmark."""
    import mteb

    from models import EchoEncoder

    parser = argparse.ArgumentParser(prog="python -m evaluation.mteb_adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    add_renamed_flag(parser, "--template-set", "--mode", help="template set (default: echo, or an export's own)")
    parser.add_argument("--pooling", help=f"one of {','.join(POOLINGS)} (default: mean, or an export's own)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tasks", help="comma-separated mteb task names")
    group.add_argument("--benchmark", help='an mteb benchmark name, e.g. "MTEB(eng, v1)"')
    parser.add_argument("--out", default="results/mteb")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dim", type=int, help="score the first N dimensions, re-normalised (Matryoshka; default: all)")
    args = parser.parse_args(argv)
    try:
        if args.tasks:
            tasks = mteb.get_tasks(tasks=[name.strip() for name in args.tasks.split(",") if name.strip()])
        else:
            tasks = mteb.get_benchmark(args.benchmark).tasks
        encoder = EchoEncoder.from_pretrained(args.model, mode=args.template_set, pooling=args.pooling)
    except (KeyError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dim is not None and not 1 <= args.dim <= encoder.model.config.hidden_size:
        print(f"error: --dim {args.dim}: expected a width in 1..{encoder.model.config.hidden_size}", file=sys.stderr)
        return 2
    for task_result in run_mteb(encoder, args.model, list(tasks), Path(args.out), args.batch_size, args.dim):
        print(f"{task_result.task_name}: main score {task_result.get_score():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
