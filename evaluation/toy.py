"""The paper's toy experiment (section 3.1): does an embedding see the whole sentence?

    python -m evaluation.toy --model smollm2-135m-instruct

Prints one table, structure (S1, S2) x template set x pooling, of the fraction of triples
with cos(q, s+) > cos(q, s-). What S1 and S2 test and how the triples are drawn:
:mod:`data.sources.toy`; the task folder: :mod:`data.toy`; the score:
:func:`evaluation.metrics.positive_win_rate`.
"""

from __future__ import annotations

import argparse
import sys

from data.sources.toy import STRUCTURES
from data.toy import prepare_toy_task
from evaluation.cli import add_renamed_flag, parse_list
from evaluation.report import format_markdown_table
from evaluation.run import evaluate_grid
from models.pooling import POOLINGS


def main(argv: list[str] | None = None) -> int:
    """Print the toy table for one model; returns the exit status (2 on a bad argument)."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registry name or a Hugging Face model folder")
    add_renamed_flag(
        parser,
        "--template-sets",
        "--modes",
        default="classical_sentence,echo_sentence",
        help="comma-separated template sets (default: the paper's toy wording, 'sentence' prompts)",
    )
    parser.add_argument("--pooling", default=",".join(POOLINGS), help="comma-separated poolings")
    parser.add_argument("--triples", type=int, default=300, help="triples per structure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        template_sets = parse_list(args.template_sets, "--template-sets")
        poolings = parse_list(args.pooling, "--pooling")
        task_dir = prepare_toy_task(args.triples, args.seed)
        records = evaluate_grid(args.model, template_sets, poolings, {"toy": task_dir}, batch_size=args.batch_size)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Toy experiment, {args.triples} triples per structure, fraction cos(q,s+) > cos(q,s-)\n")
    print(format_markdown_table(records, metrics=list(STRUCTURES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
