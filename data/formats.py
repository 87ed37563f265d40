"""On-disk data formats: contrastive training examples (read) and evaluation task folders (written).

Training examples come in three JSONL dialects, all read by :func:`read_examples`:

- ``echo``: this project's own rows ``{"query", "positive", "negatives": [...],
  "instruction"?, "dataset"?}`` (what :mod:`data.prepare` writes), no other key;
- ``flag``: FlagEmbedding's ``{"query", "pos": [...], "neg": [...], "prompt"?}``,
  one example per positive;
- ``e5``: the E5 / LLM2Vec echo-data files ``{"query", "positive", "negative"}``, one
  file per dataset, the instruction given by the caller.

Other keys in ``flag`` and ``e5`` rows are ignored (those files carry scores and types);
in ``echo`` rows they are errors (a misspelt ``negative`` would silently drop the hard
negatives). Rows that repeat an earlier row are kept: real sources repeat a verse or a
definition, and the loss masks in-batch duplicates.

A path ``hf:<dataset_id>[:<split>]`` reads the same rows through ``datasets``
(``load_from_disk`` when the id is a local folder written by ``save_to_disk``).

Evaluation task folders (``task.json`` plus JSONL files, see :func:`write_task`) are the
contract between data preparation and the evaluation package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from echo_base import DataFormatError, iter_jsonl, shown

ExampleFormat = Literal["echo", "flag", "e5"]

# The JSONL files each task type holds, and the keys every row of them must carry.
TASK_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "retrieval": {
        "queries.jsonl": ("id", "text"),
        "corpus.jsonl": ("id", "text"),
        "qrels.jsonl": ("query_id", "doc_id", "relevance"),
    },
    "sts": {"pairs.jsonl": ("text1", "text2", "score")},
    "classification": {"train.jsonl": ("text", "label"), "test.jsonl": ("text", "label")},
    "clustering": {"items.jsonl": ("text", "label")},
    # The S1/S2 whole-sentence diagnostic (data/toy.py): triples of both structures in one file.
    "toy": {"triples.jsonl": ("structure", "query", "positive", "negative")},
}
TASK_META_KEYS = ("name", "type", "instruction", "symmetric", "source", "license", "description")


@dataclass(frozen=True)
class TrainingExample:
    """One contrastive training row: a query, its positive and its hard negatives."""

    query: str
    positive: str
    negatives: tuple[str, ...]  # hard negatives, may be empty
    instruction: str | None  # per-row instruction, else None
    dataset: str  # every global batch is drawn from a single dataset
    line: int = field(default=0, compare=False)  # the row's line in the file read (1-based); 0 when made in memory

    def to_json(self) -> dict[str, Any]:
        """The ``echo``-format row for this example."""
        row: dict[str, Any] = {"query": self.query, "positive": self.positive, "negatives": list(self.negatives)}
        if self.instruction is not None:
            row["instruction"] = self.instruction
        row["dataset"] = self.dataset
        return row


def read_examples(
    path: str | Path,
    fmt: ExampleFormat,
    *,
    dataset: str,
    instruction: str | None = None,
    num_negatives: int | None = None,
) -> list[TrainingExample]:
    """Read and validate every row of a training file before returning any of it.

    ``dataset`` and ``instruction`` apply to rows that do not name their own (a row's own
    value wins). ``num_negatives`` keeps the first N hard negatives of each row; a row with
    fewer than N is an error. Raises :class:`DataFormatError` naming file and line for bad
    JSON or UTF-8, a key given twice, missing / empty / non-string fields, unknown keys of
    an echo row, wrong list types and too few negatives, and naming the file when it holds
    no rows, cannot be loaded (``hf:``) or read (BadInputError: missing, a folder).
    """
    if fmt not in _ROW_PARSERS:
        raise ValueError(f"unknown example format {fmt!r}; expected one of {sorted(_ROW_PARSERS)}")
    if num_negatives is not None and num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0 or None, got {num_negatives}")
    parse_row = _ROW_PARSERS[fmt]
    source_name = str(path)
    examples: list[TrainingExample] = []
    for line_number, row in _iter_rows(path):
        where = f"{source_name}:{line_number}"
        for example in parse_row(row, where, dataset, instruction):
            examples.append(_keep_negatives(example, num_negatives, where, line_number))
    if not examples:
        raise DataFormatError(f"{source_name}: no examples")
    return examples


def _iter_rows(path: str | Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield ``(line number, row)`` from a JSONL file or an ``hf:`` dataset (1-based rows)."""
    if str(path).startswith("hf:"):
        yield from enumerate(_load_hf_rows(str(path)), start=1)
    else:
        yield from iter_jsonl(path)


def _load_hf_rows(spec: str) -> Iterable[Mapping[str, Any]]:
    """Rows of ``hf:<dataset_id>[:<split>]``; a local ``save_to_disk`` folder needs no hub."""
    import datasets  # imported here: only users of hf: paths pay for it

    dataset_id, _, split = spec[len("hf:") :].partition(":")
    if not dataset_id:
        raise DataFormatError(f"{spec}: expected hf:<dataset_id>[:<split>]")
    split = split or "train"
    try:
        if not Path(dataset_id).is_dir():
            return datasets.load_dataset(dataset_id, split=split)
        loaded = datasets.load_from_disk(dataset_id)
    except (OSError, ValueError) as error:  # no such dataset, no hub, not a saved dataset, no such split
        raise DataFormatError(f"{spec}: cannot load ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataFormatError(f"{spec}: split {split!r} not in {sorted(loaded)}")
        loaded = loaded[split]
    return loaded


def _required_text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}: {key!r} must be a non-empty string")
    return value


def _optional_text(row: Mapping[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}: {key!r} must be a non-empty string when present")
    return value


def _text_list(row: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[str, ...]:
    value = row.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: {key!r} must be a list of non-empty strings")
    for position, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataFormatError(f"{where}: {key!r}[{position}] must be a non-empty string")
    return tuple(value)


ECHO_KEYS = ("query", "positive", "negatives", "instruction", "dataset")


def _parse_echo_row(
    row: Mapping[str, Any], where: str, dataset: str, instruction: str | None
) -> list[TrainingExample]:
    unknown = [key for key in row if key not in ECHO_KEYS]
    if unknown:
        raise DataFormatError(f"{where}: unknown key(s) {shown(unknown)}; an echo row has {list(ECHO_KEYS)}")
    return [
        TrainingExample(
            query=_required_text(row, "query", where),
            positive=_required_text(row, "positive", where),
            negatives=_text_list(row, "negatives", where, required=False),
            instruction=_optional_text(row, "instruction", where) or instruction,
            dataset=_optional_text(row, "dataset", where) or dataset,
        )
    ]


def _parse_flag_row(
    row: Mapping[str, Any], where: str, dataset: str, instruction: str | None
) -> list[TrainingExample]:
    query = _required_text(row, "query", where)
    positives = _text_list(row, "pos", where, required=True)
    if not positives:
        raise DataFormatError(f"{where}: 'pos' must hold at least one positive")
    negatives = _text_list(row, "neg", where, required=False)
    row_instruction = _optional_text(row, "prompt", where) or instruction
    return [TrainingExample(query, positive, negatives, row_instruction, dataset) for positive in positives]


def _parse_e5_row(
    row: Mapping[str, Any], where: str, dataset: str, instruction: str | None
) -> list[TrainingExample]:
    # The E5 files carry one negative as a string; accept a list too for hand-made files.
    negative = row.get("negative")
    if isinstance(negative, list):
        negatives = _text_list(row, "negative", where, required=True)
    elif negative is None:
        negatives = ()
    else:
        negatives = (_required_text(row, "negative", where),)
    return [
        TrainingExample(
            query=_required_text(row, "query", where),
            positive=_required_text(row, "positive", where),
            negatives=negatives,
            instruction=instruction,
            dataset=dataset,
        )
    ]


_ROW_PARSERS = {"echo": _parse_echo_row, "flag": _parse_flag_row, "e5": _parse_e5_row}


def _keep_negatives(example: TrainingExample, num_negatives: int | None, where: str, line: int) -> TrainingExample:
    """``example`` with its first ``num_negatives`` hard negatives (None: all) and its ``line``."""
    if num_negatives is not None and len(example.negatives) < num_negatives:
        raise DataFormatError(
            f"{where}: needs {num_negatives} hard negatives (num_negatives), row has {len(example.negatives)}"
        )
    return replace(example, negatives=example.negatives[:num_negatives], line=line)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as UTF-8 JSONL (one object per line); returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_task(folder: Path, meta: Mapping[str, Any], files: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, int]:
    """Write one evaluation task folder: ``task.json`` plus the JSONL files of its type.

    ``meta`` must hold exactly :data:`TASK_META_KEYS`; ``files`` exactly the files that
    :data:`TASK_FILES` lists for ``meta["type"]``, each row with that file's keys. Raises
    ``ValueError`` naming the task and the missing piece; returns row counts per file.
    """
    name = meta.get("name", folder.name)
    if set(meta) != set(TASK_META_KEYS):
        raise ValueError(f"task {name!r}: task.json keys {sorted(meta)} != {sorted(TASK_META_KEYS)}")
    expected_files = TASK_FILES.get(meta["type"])
    if expected_files is None:
        raise ValueError(f"task {name!r}: unknown type {meta['type']!r}; expected one of {sorted(TASK_FILES)}")
    if set(files) != set(expected_files):
        raise ValueError(f"task {name!r}: files {sorted(files)} != {sorted(expected_files)} for type {meta['type']!r}")
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for file_name, rows in files.items():
        if not rows:
            raise ValueError(f"task {name!r}: {file_name} would be empty")
        for row_number, row in enumerate(rows, start=1):
            missing = [key for key in expected_files[file_name] if key not in row]
            if missing:
                raise ValueError(f"task {name!r}: {file_name} row {row_number} lacks {missing}")
        counts[file_name] = write_jsonl(folder / file_name, rows)
    (folder / "task.json").write_text(json.dumps(dict(meta), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts
