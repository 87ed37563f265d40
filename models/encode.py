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
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from echo_base import BadInputError, UsageError, atomic_file, iter_jsonl, iter_lines
from models.encoder import DTYPES, EchoEncoder

INPUT_SUFFIXES = (".txt", ".jsonl")
OUTPUT_SUFFIXES = (".npy", ".jsonl")


class _ArgumentParser(argparse.ArgumentParser):
    """Raises UsageError instead of printing the usage and exiting, so a bad argument ends in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(value: str) -> int:
    """An argparse ``type``: an integer >= 1."""
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the arguments, the input and output paths' suffixes and the output folder.

    Raises UsageError naming the argument.
    """
    parser = _ArgumentParser(prog="python -m models.encode", description="Embed every text of a file with an echo model.")
    parser.add_argument("--model", required=True, help="registry name, model folder (an export) or hub id")
    parser.add_argument("--input", required=True, type=Path,
                        help=".txt (one text a line) or .jsonl (objects with a 'text' field and an optional 'id')")
    parser.add_argument("--out", required=True, type=Path,
                        help=".npy (float32 [n, hidden]) or .jsonl (one {id?, text, embedding} a line)")
    parser.add_argument("--kind", default="query", choices=("query", "document"),
                        help="which side's template the texts take (default: query)")
    parser.add_argument("--instruction", help="the task instruction, for template sets that take one")
    parser.add_argument("--max-tokens", type=_positive_int,
                        help="token budget of a batch: texts x longest prompt (default: none)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="most texts in a batch (default: 32)")
    parser.add_argument("--max-length", type=_positive_int, help="token limit of a prompt (default: the model's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="weight dtype (default: float32 weights under bfloat16 autocast)")
    args = parser.parse_args(argv)
    for flag, path, suffixes in (("--input", args.input, INPUT_SUFFIXES), ("--out", args.out, OUTPUT_SUFFIXES)):
        if path.suffix not in suffixes:
            raise UsageError(f"{flag} {path}: unknown suffix {path.suffix!r}; expected one of {', '.join(suffixes)}")
    _check_output_folder(args.out)
    return args


def _check_output_folder(out: Path) -> None:
    """Check that ``out`` can be written before the model loads, so a wrong --out is not found after the encoding."""
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: folder {folder} is not writable")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The texts of a .txt or .jsonl file as ``{"text"}`` records (plus ``"id"`` where a row has one), in file order.

    Raises BadInputError naming the file, and the line where there is one, when the file
    cannot be read, is not UTF-8, has an empty line (.txt) or a bad row (.jsonl), or holds
    no text.
    """
    records = []
    if path.suffix == ".txt":
        for line_number, line in iter_lines(path):
            # Every line is one text (one output row), so an empty line is a missing text, not a separator.
            if not line.strip():
                raise BadInputError(f"{path}:{line_number}: empty line (every line is one text)")
            records.append({"text": line})
    else:
        for line_number, row in iter_jsonl(path):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise BadInputError(f"{path}:{line_number}: 'text' must be a non-empty string")
            records.append({"id": row["id"], "text": text} if "id" in row else {"text": text})
    if not records:
        raise BadInputError(f"{path}: no texts")
    return records


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
        records = read_records(args.input)
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
