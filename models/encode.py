"""The encode command: embed every text of a file with an echo model (``python -m models.encode``).

Input: ``.txt`` (one text a line) or ``.jsonl`` (one object a line with a ``text`` field and
an optional ``id``). Output: ``.npy`` (float32 [n, hidden], rows L2-normalized) or
``.jsonl`` (one ``{"id"?, "text", "embedding"}`` a line), in input order either way.

Texts are batched longest first, at most ``--batch-size`` texts and ``--max-tokens``
padded tokens a batch; a progress bar counts texts. The output file appears complete or
not at all. Bad input (a missing, empty or malformed file, a bad argument) ends in one
line ``error: ...`` and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from echo_base import BadInputError, UsageError, atomic_file, read_text_records
from echo_base.cli import ArgumentParser, check_output_path, positive_int
from models.encoder import DTYPES, EchoEncoder

INPUT_SUFFIXES = (".txt", ".jsonl")
OUTPUT_SUFFIXES = (".npy", ".jsonl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the arguments, the input and output paths' suffixes and the output folder.

    Raises UsageError naming the argument.
    """
    parser = ArgumentParser(prog="python -m models.encode", description="Embed every text of a file with an echo model.")
    parser.add_argument("--model", required=True, help="registry name, model folder (an export) or hub id")
    parser.add_argument("--input", required=True, type=Path,
                        help=".txt (one text a line) or .jsonl (objects with a 'text' field and an optional 'id')")
    parser.add_argument("--out", required=True, type=Path,
                        help=".npy (float32 [n, hidden]) or .jsonl (one {id?, text, embedding} a line)")
    parser.add_argument("--kind", default="query", choices=("query", "document"),
                        help="which side's template the texts take (default: query)")
    parser.add_argument("--instruction", help="the task instruction, for template sets that take one")
    parser.add_argument("--max-tokens", type=positive_int,
                        help="token budget of a batch: texts x longest prompt (default: none)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="most texts in a batch (default: 32)")
    parser.add_argument("--max-length", type=positive_int, help="token limit of a prompt (default: the model's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="weight dtype (default: float32 weights under bfloat16 autocast)")
    args = parser.parse_args(argv)
    for flag, path, suffixes in (("--input", args.input, INPUT_SUFFIXES), ("--out", args.out, OUTPUT_SUFFIXES)):
        if path.suffix not in suffixes:
            raise UsageError(f"{flag} {path}: unknown suffix {path.suffix!r}; expected one of {', '.join(suffixes)}")
    # Checked before the model loads, so a wrong --out is not found after the encoding.
    check_output_path(args.out)
    return args


def write_embeddings(out: Path, records: list[dict[str, Any]], vectors: np.ndarray) -> None:
    """Write one embedding per record to ``out`` (.npy or .jsonl); the file appears complete or not at all."""
    with atomic_file(out) as staging, open(staging, "wb") as file:
        if out.suffix == ".npy":
            np.save(file, vectors)  # a file object, not a path: np.save would append .npy to the staging name
        else:
            for record, vector in zip(records, vectors, strict=True):
                file.write((json.dumps({**record, "embedding": vector.tolist()}, ensure_ascii=False) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    try:
        args = parse_args(argv)
        records = read_text_records(args.input)
        encoder = EchoEncoder.from_pretrained(args.model, max_length=args.max_length, dtype=args.dtype)
        vectors = encoder.encode([record["text"] for record in records], kind=args.kind,
                                 instruction=args.instruction, batch_size=args.batch_size, show_progress=True,
                                 max_tokens=args.max_tokens)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_embeddings(args.out, records, vectors)
    print(f"wrote {len(records)} embeddings of dimension {vectors.shape[1]} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
