"""Evaluate one model under every (template set, pooling) on local tasks and write a report.

    python -m evaluation.run --model smollm2-135m-instruct --template-sets classical,echo,prompteol \\
        --pooling mean,last --tasks all --max-examples 200 --out results/zero-shot
    python -m evaluation.run --model runs/echo_lora/export --dims 64,128,256,full --out results/matryoshka

The model loads once; other (template set, pooling) settings reuse its weights. A fine-tuned
export (a folder with ``echo_config.json``) is evaluated in its own template set and pooling
unless ``--template-sets``/``--pooling`` say otherwise (``--modes`` is the deprecated old
spelling of ``--template-sets``). ``--dims`` scores each setting at Matryoshka prefix widths
too (``EchoEncoder.encode(..., dim=N)``): every text is encoded once at full width and each
width truncates those vectors, so more widths cost no more encoding; a cell's label then
ends in ``@N``. Writes ``results.json``, ``results.md`` and ``results.png`` into ``--out``
and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from echo_base import UsageError
from evaluation.cli import add_renamed_flag, parse_list
from evaluation.report import format_markdown_table, write_report
from evaluation.tasks import MAIN_METRICS, evaluate_task, load_task_info, resolve_tasks
from models import EchoEncoder
from models.encoder import ECHO_CONFIG, truncate_embeddings
from models.pooling import POOLINGS, check_pooling
from models.templates import get_template_set

ZERO_SHOT_TEMPLATE_SETS = "classical,echo,prompteol"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the arguments (everything that can be checked before a model loads)."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registry name (smollm2-135m-instruct) or model folder")
    add_renamed_flag(parser, "--template-sets", "--modes",
                     help=f"comma-separated template sets (default: {ZERO_SHOT_TEMPLATE_SETS}; an export's own)")
    parser.add_argument("--pooling",
                        help=f"comma-separated poolings from {','.join(POOLINGS)} (default: all; an export's own)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names or folders, 'toy', or 'all'")
    parser.add_argument("--out", help="output folder (default: results/<model name>)")
    parser.add_argument("--max-examples", type=int, help="cap the rows each task evaluates (seeded sample)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, help="token limit per prompt (default: the model's)")
    parser.add_argument("--dims", default="full",
                        help="comma-separated embedding widths to score, 'full' for the whole (Matryoshka; default: full)")
    args = parser.parse_args(argv)

    # None stands for the model's own setting: an export's echo_config.json knows it.
    is_export = (Path(args.model) / ECHO_CONFIG).is_file()
    args.template_sets = (parse_list(args.template_sets, "--template-sets")
                          or ([None] if is_export else ZERO_SHOT_TEMPLATE_SETS.split(",")))
    args.pooling = parse_list(args.pooling, "--pooling") or ([None] if is_export else list(POOLINGS))
    for template_set in args.template_sets:
        if template_set is not None:
            get_template_set(template_set)  # raises ValueError listing the known template sets
    for pooling in args.pooling:
        if pooling is not None:
            try:
                check_pooling(pooling)
            except ValueError as error:
                raise UsageError(f"--pooling: {error}") from None
    for flag, value in (("--max-examples", args.max_examples), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    args.dims = [_parse_dim(item) for item in parse_list(args.dims, "--dims")]
    args.tasks = parse_list(args.tasks, "--tasks")
    args.out = Path(args.out) if args.out else Path("results") / Path(args.model.rstrip("/")).name
    return args


def _parse_dim(value: str) -> int | None:
    """One ``--dims`` item: a positive width, or ``full`` (None)."""
    if value == "full":
        return None
    if not value.isdecimal() or int(value) < 1:
        raise UsageError(f"--dims: expected positive widths or 'full', got {value!r}")
    return int(value)


class PrefixEncoder:
    """An encoder's embeddings at one prefix width, truncated from full-width vectors encoded once.

    Encoders of several widths share ``full_width``: each distinct ``encode`` call (texts,
    kind, instruction) is encoded at full width the first time any of them makes it, and
    every width truncates and re-normalises those vectors as ``encode(..., dim=N)`` does
    (``dim=None``: the full-width vectors themselves).
    """

    def __init__(self, encoder: EchoEncoder, dim: int | None, full_width: dict) -> None:
        self.encoder, self.dim, self.full_width = encoder, dim, full_width

    def encode(self, texts: list[str], kind: str = "query", instruction: str | Sequence[str | None] | None = None,
               batch_size: int = 32) -> np.ndarray:
        key = (tuple(texts), kind, instruction if instruction is None or isinstance(instruction, str) else tuple(instruction))
        if key not in self.full_width:
            self.full_width[key] = self.encoder.encode(texts, kind=kind, instruction=instruction, batch_size=batch_size)
        vectors = self.full_width[key]
        return vectors if self.dim is None else truncate_embeddings(vectors, self.dim)


def evaluate_grid(
    model: str,
    template_sets: list[str | None],
    poolings: list[str | None],
    task_dirs: dict[str, Path],
    max_examples: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    dims: list[int | None] = (None,),
) -> list[dict]:
    """Evaluate every (template set, pooling, width) of ``model`` on every task; one report record per cell.

    The weights load once; other settings reuse them through ``EchoEncoder.with_templates``.
    A None template set or pooling means the model's own (an export's echo_config.json, else
    echo/mean). A width in ``dims`` scores the first N dimensions (:class:`PrefixEncoder`); None
    is the full width.
    """
    task_types = {name: load_task_info(folder).type for name, folder in task_dirs.items()}
    settings = list(itertools.product(template_sets, poolings))
    first_template_set, first_pooling = settings[0]
    base = EchoEncoder.from_pretrained(model, mode=first_template_set, pooling=first_pooling, max_length=max_length)
    too_wide = [dim for dim in dims if dim is not None and dim > base.model.config.hidden_size]
    if too_wide:
        raise UsageError(f"--dims: {too_wide} exceed the embedding width {base.model.config.hidden_size} of {model}")
    records = []
    for template_set, pooling in settings:
        encoder = base if (template_set, pooling) == settings[0] else base.with_templates(template_set, pooling)
        full_width: dict = {}  # this setting's full-width vectors, shared by its widths
        for dim in dims:
            width_encoder = PrefixEncoder(encoder, dim, full_width)
            label = f"{encoder.template_set}/{encoder.pooling}" + (f"@{dim}" if dim is not None else "")
            for name, folder in task_dirs.items():
                started = time.perf_counter()
                metrics = evaluate_task(width_encoder, folder, max_examples, batch_size)
                seconds = time.perf_counter() - started
                print(f"{label:>24} {name:<28} {seconds:7.1f}s  "
                      + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()), file=sys.stderr)
                records.append({"label": label, "template_set": encoder.template_set,
                                "mode": encoder.template_set,  # the old name, kept one release for readers of reports
                                "pooling": encoder.pooling, "dim": dim, "task": name, "task_type": task_types[name],
                                "metrics": metrics, "main_metrics": MAIN_METRICS[task_types[name]],
                                "seconds": round(seconds, 2)})
    return records


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or task)."""
    try:
        args = parse_args(argv)
        task_dirs = resolve_tasks(args.tasks)
        records = evaluate_grid(args.model, args.template_sets, args.pooling, task_dirs, args.max_examples,
                                args.batch_size, args.max_length, args.dims)
    except (ValueError, FileNotFoundError) as error:  # includes DataFormatError; one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    title = f"{args.model}: local tasks" + (f" (max {args.max_examples} examples)" if args.max_examples else "")
    metadata = {"model": args.model, "max_examples": args.max_examples, "batch_size": args.batch_size,
                "max_length": args.max_length, "dims": args.dims, "argv": sys.argv[1:] if argv is None else argv}
    paths = write_report(records, args.out, title, metadata, label_name="template set/pooling")
    print(format_markdown_table(records))
    print(f"\nwrote {', '.join(str(path) for path in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
