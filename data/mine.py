"""The mining command: a training file in, the same examples with mined hard negatives out.

    python -m data.mine --model smollm2-135m-instruct --input train.jsonl --out mined.jsonl \\
        [--format echo|flag|e5] [--corpus texts.jsonl] [--ranks 10:100] [--negatives 7] \\
        [--margin 0.05|none] [--near-duplicate 0.8] [--no-filter] [--batch-size 32] [--max-length 256]

The input is read in any of the three formats of :mod:`data.formats` (``--dataset`` and
``--instruction`` fill rows that carry none); the output is this project's own (``echo``)
format, one row per example, its negatives hardest first. ``--model`` resolves like
``EchoEncoder.from_pretrained`` (a registry name, an export or model folder): by default the
zero-shot echo template with mean pooling, an export in its own templates. The rule (rank
window, false-negative filter) is :mod:`data.hard_negatives`'; a summary line of what was
dropped goes to stderr. Bad input (a malformed row, a bad option) ends in one line naming the
file and line or the option, exit code 2, before the model loads; the output appears complete
or not at all.

Layering: ``data`` does not import ``models``, except here. The mining itself
(:mod:`data.hard_negatives`) takes an ``encode`` callable and stays model-free, so the
data layer (a mix built with mined negatives) can use it; this module, a command that
nothing imports, is the one place in ``data`` that imports ``models`` (its encoder and pooling
names; ``tests/test_layers.py`` holds the exception to that). The alternatives were a command outside
``data`` (but ``python -m data.mine`` is where users look for it) or a subprocess running
``models.encode`` (an import in all but name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.formats import read_examples, write_jsonl
from data.hard_negatives import MiningRule, mine_hard_negatives
from echo_base import BadInputError, UsageError, atomic_file, read_text_records
from echo_base.cli import ArgumentParser, check_output_path, positive_int
from models.encoder import EchoEncoder
from models.pooling import POOLINGS


def _ranks(value: str) -> tuple[int, int]:
    """An argparse ``type``: ``FIRST:LAST``, 1-based and inclusive."""
    first, separator, last = value.partition(":")
    if not separator or not first.isdecimal() or not last.isdecimal() or not 1 <= int(first) <= int(last):
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST with 1 <= FIRST <= LAST, got {value!r}")
    return int(first), int(last)


def _margin(value: str) -> float | None:
    """An argparse ``type``: a cosine margin >= 0, or ``none`` (no score test)."""
    return None if value == "none" else _non_negative_float(value)


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return number


def _similarity(value: str) -> float:
    number = _non_negative_float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value!r}")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the arguments and the output path; raises UsageError naming the option."""
    parser = ArgumentParser(prog="python -m data.mine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="registry name, model folder or export that ranks the candidates (default: %(default)s)")
    parser.add_argument("--input", required=True, type=Path, help="training examples (JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="where the mined examples go (JSONL, echo format)")
    parser.add_argument("--format", default="echo", choices=("echo", "flag", "e5"), help="the input's row format")
    parser.add_argument("--dataset", help="dataset name for rows that carry none (default: the input file's stem)")
    parser.add_argument("--instruction", help="query instruction for rows that carry none")
    parser.add_argument("--corpus", type=Path,
                        help="candidate pool: .txt (a text a line) or .jsonl ('text' fields); default: every "
                             "positive and negative of the input")
    parser.add_argument("--ranks", type=_ranks, default=(10, 100), help="rank window FIRST:LAST (default: 10:100)")
    parser.add_argument("--negatives", type=positive_int, default=7, help="negatives per example (default: 7)")
    parser.add_argument("--margin", type=_margin, default=0.05,
                        help="drop candidates scoring above the positive's cosine minus this; 'none': no score test, "
                             "for a weak ranking model (default: 0.05)")
    parser.add_argument("--near-duplicate", type=_similarity, default=0.8,
                        help="drop candidates whose character 3-gram Jaccard with a positive is at least this "
                             "(default: 0.8)")
    parser.add_argument("--no-filter", action="store_true",
                        help="keep likely false negatives (no margin or duplicate test): for comparison only")
    parser.add_argument("--template-set", help="template set (default: echo, or an export's own)")
    parser.add_argument("--pooling", choices=POOLINGS, help="pooling (default: mean, or an export's own)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="most texts in a batch (default: 32)")
    parser.add_argument("--max-length", type=positive_int, help="token limit of a prompt (default: the model's)")
    args = parser.parse_args(argv)
    check_output_path(args.out)
    if args.out.resolve() == args.input.resolve():
        raise UsageError(f"--out {args.out}: is the input file; write the mined examples elsewhere")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    try:
        args = parse_args(argv)
        rule = MiningRule(first_rank=args.ranks[0], last_rank=args.ranks[1], negatives=args.negatives,
                          margin=args.margin, near_duplicate=args.near_duplicate,
                          filter_false_negatives=not args.no_filter)
        examples = read_examples(args.input, args.format, dataset=args.dataset or args.input.stem,
                                 instruction=args.instruction)
        corpus = [record["text"] for record in read_text_records(args.corpus)] if args.corpus else None
        encoder = EchoEncoder.from_pretrained(args.model, mode=args.template_set, pooling=args.pooling,
                                              max_length=args.max_length)

        def encode(texts: list[str], kind: str, instructions: list[str | None] | None):
            return encoder.encode(texts, kind=kind, instruction=instructions, batch_size=args.batch_size,
                                  show_progress=True)

        mined, stats = mine_hard_negatives(examples, encode, rule, corpus)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with atomic_file(args.out) as staging:
        write_jsonl(staging, (example.to_json() for example in mined))
    print(f"mined {args.out}: {stats.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
