"""Malformed inputs for the training command line, generated from a seed, and the judge of each run.

Every :class:`Case` writes one malformed input into a fresh folder beside a valid run (a
tiny model, two small datasets, a config): a data file in each format of
``data/formats.py`` (``echo``, ``flag``, ``e5``, ``hf:``), a task folder, a config file, a
``key=value`` override or a command-line argument. Missing fields, wrong types, empty and
1 MB strings, invalid UTF-8, a UTF-16 file, a truncated last line, empty files, a folder
where a file belongs, missing files, keys given twice, unknown keys, negative and zero
counts, unknown mix, template, task and model names. The seed picks the rows, the line
that is broken and the bytes that break it, so each seed tries the same kinds at other
places.

A case is run through the real entry point: ``train.finetune.cli`` in this process with
the case's argv (``command="cli"``), or ``python train/finetune.py``,
``python -m train.preflight`` or ``./launch.sh`` as a subprocess. :func:`judge` holds it to
the project's rule for bad input: exit status 2, exactly one line on stderr that names the
file:line, the file, the key or the argument (:attr:`Invocation.where`), no traceback, and
nothing written: the case's folder holds the same files after the run as before (so no
output folder, no wandb run, no log).

What looks odd but is valid (a UTF-8 BOM, CRLF line ends, blank lines, a last line without
its newline, a 1 MB text, a row that repeats another) is not here:
``tests/test_fuzz_inputs.py`` proves each of those is read as intended.

    PYTHONPATH=. python -m tests.fuzz_inputs [--seed 0] [--subprocess]

prints each case's verdict, then the two figures: malformed inputs tried, and how many
ended in one line naming the file, line or key.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MEGABYTE = 1 << 20
WORDS = "cat dog river mountain bird fox hound sea tree stone bridge mill cloud rain snow".split()
MAX_LINE = 2100  # what a one-line error may reach: echo_base.errors cuts longer ones to about 2000


@dataclass(frozen=True)
class Invocation:
    """How to run a case, and what its one error line must name."""

    argv: list[str]
    where: str  # a file:line, a file, a key or an argument
    command: str = "cli"  # "cli" (in this process), "script" (python train/finetune.py), "preflight", "launch"
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """A named malformed input: ``make`` writes it into a :class:`Workspace` and says how to run it."""

    name: str
    make: Callable[[Workspace], Invocation]


class Workspace:
    """A fresh folder holding a valid run (tiny model given, two datasets, a config) to break one input of."""

    def __init__(self, folder: Path, model_dir: Path, rng: random.Random) -> None:
        self.folder, self.model_dir, self.rng = folder, model_dir, rng
        self.good = self.jsonl("b.jsonl", [self.row("echo") for _ in range(12)])
        self.output_dir = folder / "run"

    # -- valid pieces -------------------------------------------------------------------
    def text(self, words: int = 4) -> str:
        return " ".join(self.rng.choices(WORDS, k=words))

    def row(self, fmt: str) -> dict:
        """A valid row of ``fmt`` with one hard negative."""
        query = self.text()
        if fmt == "flag":
            return {"query": query, "pos": [query + " " + self.text(1)], "neg": [self.text(5)]}
        if fmt == "e5":
            return {"query": query, "positive": query + " " + self.text(1), "negative": self.text(5)}
        return {"query": query, "positive": query + " " + self.text(1), "negatives": [self.text(5)],
                "instruction": "Find the matching text"}

    def jsonl(self, name: str, rows: list[dict]) -> Path:
        return self.write(name, "".join(json.dumps(row) + "\n" for row in rows).encode())

    def write(self, name: str, content: bytes) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def config_dict(self, data_path: str | Path | None = None, fmt: str = "echo") -> dict:
        return {
            "output_dir": str(self.output_dir),
            "model": {"name": str(self.model_dir), "max_length": 48, "precision": "fp32"},
            "lora": {"r": 4, "alpha": 8},
            "data": {"mix": None, "dev": None, "datasets": [
                {"name": "a", "path": str(data_path or self.jsonl("a.jsonl", [self.row("echo") for _ in range(12)])),
                 "format": fmt},
                {"name": "b", "path": str(self.good)},
            ]},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-3},
            "wandb": {"mode": "offline"},
        }

    def config(self, config: dict | None = None, name: str = "config.yaml") -> Path:
        path = self.folder / name
        path.write_text(yaml.safe_dump(config if config is not None else self.config_dict(), sort_keys=False))
        return path

    def run(self, *overrides: str, config: Path | None = None) -> Invocation:
        """Finetune on the valid config (or ``config``) with ``overrides``; ``where`` filled in by the caller."""
        return Invocation(["--config", str(config or self.config()), *overrides], where="")

    # -- broken pieces ------------------------------------------------------------------
    def rows_with(self, fmt: str, bad_line: bytes, name: str = "bad.jsonl") -> tuple[Path, int]:
        """A ``fmt`` file of valid rows with ``bad_line`` at a seeded line (not the first); returns (file, line)."""
        lines = [json.dumps(self.row(fmt)).encode() for _ in range(self.rng.randint(4, 9))]
        line = self.rng.randint(2, len(lines) + 1)
        lines.insert(line - 1, bad_line)
        return self.write(name, b"\n".join(lines) + b"\n"), line

    def bad_row_case(self, fmt: str, bad: dict | bytes) -> Invocation:
        bad_line = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        path, line = self.rows_with(fmt, bad_line)
        return _where(self.run(config=self.config(self.config_dict(path, fmt))), f"{path}:{line}")

    def data_file_case(self, path: Path | str, where: str, fmt: str = "echo") -> Invocation:
        return _where(self.run(config=self.config(self.config_dict(path, fmt))), where)

    def config_case(self, change: Callable[[dict], None], where: str) -> Invocation:
        config = self.config_dict()
        change(config)
        return _where(self.run(config=self.config(config)), where)

    def retrieval_task(self, name: str) -> Path:
        from data.formats import write_task

        folder = self.folder / name
        queries = [{"id": f"q{i}", "text": self.text()} for i in range(3)]
        corpus = [{"id": f"d{i}", "text": self.text(6)} for i in range(3)]
        qrels = [{"query_id": f"q{i}", "doc_id": f"d{i}", "relevance": 1} for i in range(3)]
        write_task(folder, _task_meta(name, "retrieval"), {"queries.jsonl": queries, "corpus.jsonl": corpus,
                                                           "qrels.jsonl": qrels})
        return folder


def _task_meta(name: str, task_type: str) -> dict:
    return {"name": name, "type": task_type, "instruction": "Find the matching text", "symmetric": False,
            "source": "fuzz", "license": "CC0", "description": "a fuzz case"}


def _where(invocation: Invocation, where: str) -> Invocation:
    return Invocation(invocation.argv, where, invocation.command, invocation.environment)


MISSING = object()  # a value that deletes its key


def _set(config: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is MISSING:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


# -- the cases ----------------------------------------------------------------------------
# Rows that break one field: (case name, format, the bad row).
BAD_ROWS: list[tuple[str, str, dict]] = [
    ("echo-missing-query", "echo", {"positive": "p", "negatives": ["n"]}),
    ("echo-missing-positive", "echo", {"query": "q", "negatives": ["n"]}),
    ("echo-query-number", "echo", {"query": 17, "positive": "p", "negatives": ["n"]}),
    ("echo-query-null", "echo", {"query": None, "positive": "p", "negatives": ["n"]}),
    ("echo-query-empty", "echo", {"query": "", "positive": "p", "negatives": ["n"]}),
    ("echo-positive-blank", "echo", {"query": "q", "positive": "   ", "negatives": ["n"]}),
    ("echo-negatives-string", "echo", {"query": "q", "positive": "p", "negatives": "n"}),
    ("echo-negatives-number-item", "echo", {"query": "q", "positive": "p", "negatives": [3]}),
    ("echo-negatives-empty-item", "echo", {"query": "q", "positive": "p", "negatives": [""]}),
    ("echo-negatives-1MB-string", "echo", {"query": "q", "positive": "p", "negatives": "n" * MEGABYTE}),
    ("echo-too-few-negatives", "echo", {"query": "q", "positive": "p", "negatives": []}),
    ("echo-instruction-list", "echo", {"query": "q", "positive": "p", "negatives": ["n"], "instruction": ["i"]}),
    ("echo-dataset-empty", "echo", {"query": "q", "positive": "p", "negatives": ["n"], "dataset": ""}),
    ("echo-unknown-key", "echo", {"query": "q", "positive": "p", "negative": ["n"]}),
    ("flag-missing-query", "flag", {"pos": ["p"], "neg": ["n"]}),
    ("flag-pos-string", "flag", {"query": "q", "pos": "p", "neg": ["n"]}),
    ("flag-pos-empty-list", "flag", {"query": "q", "pos": [], "neg": ["n"]}),
    ("flag-neg-number-item", "flag", {"query": "q", "pos": ["p"], "neg": [1.5]}),
    ("flag-prompt-number", "flag", {"query": "q", "pos": ["p"], "neg": ["n"], "prompt": 0}),
    ("e5-missing-positive", "e5", {"query": "q", "negative": "n"}),
    ("e5-query-empty", "e5", {"query": "", "positive": "p", "negative": "n"}),
    ("e5-negative-number", "e5", {"query": "q", "positive": "p", "negative": 7}),
    ("e5-negative-list-empty-item", "e5", {"query": "q", "positive": "p", "negative": ["n", ""]}),
]

# Lines that are not a row at all: (case name, the bad line given the seeded rng).
BAD_LINES: list[tuple[str, Callable[[random.Random], bytes]]] = [
    ("jsonl-invalid-json", lambda rng: b'{"query": "q", "positive": }'),
    ("jsonl-array-row", lambda rng: b'["q", "p", ["n"]]'),
    ("jsonl-number-row", lambda rng: str(rng.randint(0, 99)).encode()),
    ("jsonl-invalid-utf8", lambda rng: b'{"query": "caf' + bytes([rng.choice([0xC3, 0xE9, 0xFF, 0x80])]) + b'", "positive": "p"}'),
    ("jsonl-bom-inside", lambda rng: b'\xef\xbb\xbf{"query": "q", "positive": "p", "negatives": ["n"]}'),
    ("jsonl-nul-bytes", lambda rng: b'{"query": "q\x00\x00", "positive": "p"\x00}'),
    ("jsonl-key-twice", lambda rng: b'{"query": "q", "positive": "p", "negatives": ["n"], "query": "r"}'),
    ("jsonl-1MB-unterminated-string", lambda rng: b'{"query": "' + b"x" * MEGABYTE),
]


def _truncated_last_line(space: Workspace) -> Invocation:
    rows = [json.dumps(space.row("echo")) for _ in range(space.rng.randint(3, 8))]
    cut = rows[-1][: space.rng.randint(2, len(rows[-1]) - 2)]  # a write stopped mid-row: no closing brace
    path = space.write("truncated.jsonl", "\n".join([*rows[:-1], cut]).encode())
    return space.data_file_case(path, f"{path}:{len(rows)}")


def _utf16_file(space: Workspace) -> Invocation:
    text = "".join(json.dumps(space.row("echo")) + "\n" for _ in range(4))
    path = space.write("utf16.jsonl", text.encode("utf-16"))  # a BOM FF FE, then two bytes a character
    return space.data_file_case(path, f"{path}:1")


def _hf_saved(space: Workspace, rows: list[dict]) -> Path:
    import datasets

    folder = space.folder / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


def _hf_empty_query(space: Workspace) -> Invocation:
    rows = [space.row("e5") for _ in range(5)]
    line = space.rng.randint(1, len(rows))
    rows[line - 1]["query"] = ""
    folder = _hf_saved(space, rows)
    return space.data_file_case(f"hf:{folder}", f"hf:{folder}:{line}", fmt="e5")


def _hf_bad_split(space: Workspace) -> Invocation:
    folder = _hf_saved(space, [space.row("e5") for _ in range(3)])
    return space.data_file_case(f"hf:{folder}:validation", f"hf:{folder}:validation", fmt="e5")


def _dev_task(space: Workspace, breaks: Callable[[Path], str]) -> Invocation:
    folder = space.retrieval_task("dev")
    where = breaks(folder)
    return _where(space.run(f"data.dev={folder}", config=space.config()), where)


def _break_query_row(space: Workspace, folder: Path) -> str:
    path = folder / "queries.jsonl"
    lines = path.read_text().splitlines()
    line = space.rng.randint(1, len(lines))
    lines[line - 1] = json.dumps({"id": f"q{line - 1}", "text": space.rng.choice([5, None, ["a"]])})
    path.write_text("\n".join(lines) + "\n")
    return f"{path}:{line}"


def _break_qrels(space: Workspace, folder: Path) -> str:
    with (folder / "qrels.jsonl").open("a") as qrels:
        qrels.write(json.dumps({"query_id": "q0", "doc_id": "d99", "relevance": 1}) + "\n")
    return str(folder / "qrels.jsonl")


def _break_task_json(folder: Path) -> str:
    (folder / "task.json").write_text("{'name': 'dev'}")  # single quotes: not JSON
    return str(folder / "task.json")


def _export_task_bad_score(space: Workspace) -> Invocation:
    from data.formats import write_task

    folder = space.folder / "sts"
    pairs = [{"text1": space.text(), "text2": space.text(), "score": float(i)} for i in range(4)]
    write_task(folder, _task_meta("sts", "sts"), {"pairs.jsonl": pairs})
    lines = (folder / "pairs.jsonl").read_text().splitlines()
    line = space.rng.randint(1, len(lines))
    lines[line - 1] = json.dumps({"text1": "a", "text2": "b", "score": "high"})
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return _where(space.run(f"export.eval_tasks=[{folder}]"), f"{folder / 'pairs.jsonl'}:{line}")


def _config_text(space: Workspace, text: bytes, where_line: int | None) -> Invocation:
    path = space.write("config.yaml", text)
    return _where(space.run(config=path), f"{path}:{where_line}" if where_line else str(path))


def _valid_yaml_lines(space: Workspace) -> list[str]:
    return yaml.safe_dump(space.config_dict(), sort_keys=False).splitlines()


def _yaml_broken_at(space: Workspace, broken: str) -> Invocation:
    """The valid config with ``broken`` inserted before a seeded top-level line; the error names
    the file and a line (the parser's: where it noticed, at or after the inserted one)."""
    lines = _valid_yaml_lines(space)
    tops = [index for index, line in enumerate(lines) if index and not line.startswith(" ")]
    lines.insert(space.rng.choice(tops), broken)
    path = space.write("config.yaml", ("\n".join(lines) + "\n").encode())
    return _where(space.run(config=path), f"{path}:")


def _yaml_key_twice(space: Workspace) -> Invocation:
    lines = _valid_yaml_lines(space)
    at = lines.index("train:") + 1
    lines.insert(at + 1, lines[at])  # train.max_steps twice
    return _config_text(space, ("\n".join(lines) + "\n").encode(), at + 2)


def _yaml_invalid_utf8(space: Workspace) -> Invocation:
    lines = _valid_yaml_lines(space)
    at = lines.index("wandb:") + 1
    encoded = [line.encode() for line in lines]
    encoded.insert(at, b"  name: caf\xe9")
    return _config_text(space, b"\n".join(encoded) + b"\n", at + 1)


def _base_cycle(space: Workspace) -> Invocation:
    first, second = space.folder / "first.yaml", space.folder / "second.yaml"
    first.write_text("base: second.yaml\n")
    second.write_text("base: first.yaml\n")
    return _where(space.run(config=first), str(first))


def _bad_template_file(space: Workspace) -> Invocation:
    path = space.write("templates.yaml", b"mine:\n  query: 'Query: {text}'\n  document: 'Document: {text}'\n")
    return _where(space.run(f"model.template_file={path}", "model.template_set=mine"), "model.template_file")


def _resume_none_over_checkpoints(space: Workspace) -> Invocation:
    (space.output_dir / "checkpoints" / f"step-{space.rng.randint(1, 9)}").mkdir(parents=True)
    return _where(space.run("train.resume=none"), "train.resume")


def _output_dir_is_a_file(space: Workspace) -> Invocation:
    path = space.write("taken", b"not a folder\n")
    return _where(space.run(f"output_dir={path / 'run'}"), "output_dir")


CASES: list[Case] = [
    *[Case(f"data/{name}", lambda space, fmt=fmt, bad=bad: space.bad_row_case(fmt, bad)) for name, fmt, bad in BAD_ROWS],
    *[Case(f"data/{name}", lambda space, bad=bad: space.bad_row_case("echo", bad(space.rng))) for name, bad in BAD_LINES],
    Case("data/jsonl-truncated-last-line", _truncated_last_line),
    Case("data/jsonl-utf16-file", _utf16_file),
    Case("data/jsonl-empty-file", lambda space: space.data_file_case(p := space.write("empty.jsonl", b""), str(p))),
    Case("data/jsonl-blank-lines-only", lambda space: space.data_file_case(p := space.write("blank.jsonl", b"\n \n\r\n"), str(p))),
    Case("data/jsonl-folder-not-file", lambda space: space.data_file_case(space.folder, str(space.folder))),
    Case("data/jsonl-missing-file", lambda space: space.data_file_case(p := space.folder / "nope.jsonl", str(p))),
    Case("data/hf-missing-folder", lambda space: space.data_file_case(f"hf:{space.folder / 'nope'}", f"hf:{space.folder / 'nope'}", "e5")),
    Case("data/hf-empty-id", lambda space: space.data_file_case("hf:", "hf:", "e5")),
    Case("data/hf-not-a-dataset-folder", lambda space: space.data_file_case(f"hf:{space.folder}", f"hf:{space.folder}", "e5")),
    Case("data/hf-unknown-split", _hf_bad_split),
    Case("data/hf-row-empty-query", _hf_empty_query),
    Case("task/dev-missing-folder", lambda space: _where(space.run(f"data.dev={space.folder / 'nope'}"), "data.dev")),
    Case("task/dev-no-task-json", lambda space: _where(space.run(f"data.dev={space.folder}"), "data.dev")),
    Case("task/dev-bad-query-row", lambda space: _dev_task(space, lambda folder: _break_query_row(space, folder))),
    Case("task/dev-qrel-unknown-doc", lambda space: _dev_task(space, lambda folder: _break_qrels(space, folder))),
    Case("task/dev-task-json-invalid", lambda space: _dev_task(space, _break_task_json)),
    Case("task/export-unknown-name", lambda space: _where(space.run("export.eval_tasks=[no-such-task]"), "export.eval_tasks")),
    Case("task/export-bad-score-row", _export_task_bad_score),
    Case("config/missing-file", lambda space: _where(space.run(config=space.folder / "nope.yaml"), str(space.folder / "nope.yaml"))),
    Case("config/folder-not-file", lambda space: _where(space.run(config=space.folder), str(space.folder))),
    Case("config/unclosed-bracket", lambda space: _yaml_broken_at(space, "tags: [a, b")),
    Case("config/tab-indent", lambda space: _yaml_broken_at(space, "\tseed: 3")),
    Case("config/top-level-list", lambda space: _config_text(space, b"- output_dir: run\n- train: {}\n", None)),
    Case("config/top-level-scalar", lambda space: _config_text(space, b"just a string\n", None)),
    Case("config/key-twice", _yaml_key_twice),
    Case("config/invalid-utf8", _yaml_invalid_utf8),
    Case("config/base-missing", lambda space: _where(space.run(config=space.write("child.yaml", b"base: parent.yaml\n")),
                                                     str(space.folder / "parent.yaml"))),
    Case("config/base-cycle", _base_cycle),
    Case("config/template-file-broken", _bad_template_file),
    Case("config/template-file-missing", lambda space: _where(space.run(f"model.template_file={space.folder / 'none.yaml'}"),
                                                              "model.template_file")),
    Case("config/resume-none-over-checkpoints", _resume_none_over_checkpoints),
    Case("config/resume-not-a-checkpoint", lambda space: _where(space.run(f"train.resume={space.folder}"), "train.resume")),
    Case("config/output-dir-below-a-file", _output_dir_is_a_file),
    Case("config/model-missing-folder", lambda space: _where(space.run(f"model.name={space.folder / 'nope'}"), "model.name")),
    Case("config/model-empty-folder", lambda space: _where(space.run(f"model.name={space.folder}"), "model.name")),
    Case("config/model-is-a-file", lambda space: _where(space.run(f"model.name={space.good}"), "model.name")),
    Case("config/model-unknown-hub-id", lambda space: _where(space.run("model.name=nobody/no-such-model"), "model.name")),
]

# Config values that break one key: (case name, dotted key, bad value); the error names the key.
BAD_VALUES: list[tuple[str, str, object]] = [
    ("unknown-section", "trainer.lr", 1),
    ("unknown-key", "train.max_stpes", 3),
    ("section-as-scalar", "train", 5),
    ("wrong-type-count", "train.max_steps", "ten"),
    ("negative-count", "train.max_steps", -3),
    ("zero-count", "train.batch_size", 0),
    ("batch-of-one", "train.batch_size", 1),
    ("negative-negatives", "data.num_negatives", -1),
    ("zero-lora-rank", "lora.r", 0),
    ("negative-lr", "train.lr", -1e-4),
    ("fractional-seed", "train.seed", 1.5),
    ("zero-dev-queries", "data.dev_max_queries", 0),
    ("negative-eval-examples", "export.eval_max_examples", -1),
    ("chunk-larger-than-batch", "train.chunk_size", 1000),
    ("unknown-mix", "data.mix", "nosuchmix"),
    ("unknown-template-set", "model.template_set", "nosuchtemplates"),
    ("unknown-pooling", "model.pooling", "max"),
    ("unknown-wandb-mode", "wandb.mode", "loud"),
    ("unknown-format", "data.datasets.0.format", "bge"),
    ("dataset-without-path", "data.datasets.0.path", MISSING),
    ("dataset-path-null", "data.datasets.0.path", None),
    ("dataset-empty-path", "data.datasets.0.path", ""),
    ("dataset-empty-name", "data.datasets.0.name", ""),
    ("duplicate-dataset-names", "data.datasets.1.name", "a"),
    ("datasets-not-a-list", "data.datasets", 5),
    ("tags-not-a-list", "wandb.tags", 5),
    ("template-set-1MB", "model.template_set", "t" * MEGABYTE),
    ("instruction-1MB", "data.datasets.0.instruction", "i" * MEGABYTE),
]
# The key an error names where it is not the dotted key itself.
_NAMED_KEY = {"unknown-section": "trainer", "duplicate-dataset-names": "data.datasets"}
CASES += [Case(f"config/{name}", lambda space, key=key, value=value, name=name: space.config_case(
    lambda config: _set(config, key, value), _NAMED_KEY.get(name, key))) for name, key, value in BAD_VALUES]

# Overrides: (case name, the override, what the error names).
BAD_OVERRIDES: list[tuple[str, str, str]] = [
    ("no-equals", "train.max_steps", "train.max_steps"),
    ("empty-key", "=3", "=3"),
    ("unknown-section", "foo.bar=1", "foo"),
    ("through-a-scalar", "train.lr.x=1", "train.lr.x"),
    ("section-as-scalar", "train=5", "train"),
    ("wrong-type", "train.max_steps=abc", "train.max_steps"),
    ("invalid-yaml-value", "train.lr=[1,", "train.lr"),
    ("empty-value", "train.lr=", "train.lr"),
    ("zero-count", "train.max_steps=0", "train.max_steps"),
    ("negative-count", "train.max_steps=-5", "train.max_steps"),
    ("unknown-mix", "data.mix=nosuchmix", "data.mix"),
    ("unknown-template-set", "model.template_set=nosuch", "model.template_set"),
    ("unknown-pooling", "model.pooling=max", "model.pooling"),
    ("datasets-not-a-list", "data.datasets=5", "data.datasets"),
    ("pooling-1MB", "model.pooling=" + "p" * MEGABYTE, "model.pooling"),
    ("key-1MB", "train." + "k" * MEGABYTE + "=1", "train.kkkkkkkk"),
    ("lora-layer-out-of-range", "lora.layers=[99]", "lora.layers"),
    ("lora-unknown-module", "lora.target_modules=[no_such_proj]", "lora.target_modules"),
]
CASES += [Case(f"override/{name}", lambda space, override=override, where=where: _where(space.run(override), where))
          for name, override, where in BAD_OVERRIDES]

# Command-line arguments of train/finetune.py: (case name, argv given the workspace, what the error names).
BAD_ARGUMENTS: list[tuple[str, Callable[[Workspace], list[str]], str]] = [
    ("no-arguments", lambda space: [], "--config"),
    ("unknown-flag", lambda space: ["--config", str(space.config()), "--lr", "3"], "--lr"),
    ("short-flag", lambda space: ["--config", str(space.config()), "-x"], "-x"),
    ("config-without-value", lambda space: ["--config"], "--config"),
    ("config-empty", lambda space: ["--config", ""], "--config"),
    ("bare-word", lambda space: ["--config", str(space.config()), "hello"], "hello"),
    ("override-with-dash", lambda space: ["--config", str(space.config()), "-train.lr=1"], "-train.lr=1"),
]
CASES += [Case(f"argv/{name}", lambda space, argv=argv, where=where: Invocation(argv(space), where))
          for name, argv, where in BAD_ARGUMENTS]


# Subprocess cases: the real programs as a user starts them (slower: each starts Python, or bash).
SUBPROCESS_CASES: list[Case] = [
    Case("launch/zero-stage", lambda space: Invocation(["--cpu", "--zero", "4", str(space.config())], "--zero", "launch")),
    Case("launch/nproc-zero", lambda space: Invocation(["--cpu", "--nproc", "0", str(space.config())], "--nproc", "launch")),
    Case("launch/unknown-option", lambda space: Invocation(["--bogus", str(space.config())], "--bogus", "launch")),
    Case("launch/missing-config", lambda space: Invocation(["--cpu", str(space.folder / "no.yaml")],
                                                           str(space.folder / "no.yaml"), "launch")),
    Case("launch/override-without-equals", lambda space: Invocation(["--cpu", str(space.config()), "train.lr"],
                                                                    "train.lr", "launch")),
    Case("launch/batch-not-divisible", lambda space: Invocation(["--cpu", "--nproc", "3", str(space.config())],
                                                                "train.batch_size", "launch")),
    Case("launch/bad-row", lambda space: _as(space.bad_row_case("echo", {"query": "q"}), "launch", ["--cpu"])),
    Case("launch/unknown-key", lambda space: Invocation(["--cpu", str(space.config()), "train.max_stpes=3"],
                                                        "train.max_stpes", "launch")),
    Case("script/bad-row", lambda space: _as(space.bad_row_case("flag", {"query": "q", "pos": "p"}), "script")),
    Case("script/unknown-flag", lambda space: Invocation(["--config", str(space.config()), "--lr", "3"], "--lr", "script")),
    Case("preflight/unknown-mix", lambda space: _as(space.run("data.mix=nosuchmix"), "preflight", where="data.mix")),
]


def _as(invocation: Invocation, command: str, launch_flags: list[str] = (), where: str | None = None) -> Invocation:
    """``invocation`` run by another program; launch.sh takes ``CONFIG [overrides]`` where finetune takes ``--config CONFIG``."""
    argv = invocation.argv
    if command == "launch":
        argv = [*launch_flags, *argv[1:]]
    return Invocation(argv, invocation.where if where is None else where, command, invocation.environment)


# -- running and judging ------------------------------------------------------------------
@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Everything written to stderr in the block: to ``sys.stderr`` (which pytest replaces) and to
    file descriptor 2 (C libraries) alike."""
    captured = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, open(sink.fileno(), "w", closefd=False, buffering=1) as text:
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield captured
        finally:
            text.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.write(sink.read().decode("utf-8", "replace"))


def run_invocation(invocation: Invocation, folder: Path) -> tuple[int, str]:
    """Run ``invocation`` with ``folder`` as the working folder; returns (exit status, stderr)."""
    if invocation.command == "cli":
        import train.finetune as finetune

        previous = Path.cwd()
        os.chdir(folder)
        try:
            with captured_stderr() as stderr, contextlib.redirect_stdout(io.StringIO()):
                status = finetune.cli(invocation.argv)
        finally:
            os.chdir(previous)
        return status, stderr.getvalue()
    program = {"script": [sys.executable, str(ROOT / "train" / "finetune.py")],
               "preflight": [sys.executable, "-m", "train.preflight"],
               "launch": [str(ROOT / "launch.sh")]}[invocation.command]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **invocation.environment}
    result = subprocess.run([*program, *invocation.argv], cwd=folder, env=environment, capture_output=True, text=True,
                            timeout=300)
    return result.returncode, result.stderr


def listing(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its size (folders: -1), to tell whether a run wrote anything."""
    return {str(path.relative_to(folder)): (path.stat().st_size if path.is_file() else -1)
            for path in sorted(folder.rglob("*"))}


def judge(invocation: Invocation, status: int, stderr: str, before: dict[str, int], after: dict[str, int]) -> list[str]:
    """What is wrong with how a malformed input ended (empty: it ended as it must)."""
    problems = []
    lines = [line for line in stderr.splitlines() if line.strip()]
    if status != 2:
        problems.append(f"exit status {status}, not 2")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, not 1: {stderr[:600]!r}")
    elif invocation.where not in lines[0]:
        problems.append(f"the line does not name {invocation.where[:200]!r}: {lines[0][:600]!r}")
    elif len(lines[0]) > MAX_LINE:
        problems.append(f"the line is {len(lines[0])} characters long")
    if after != before:
        written = sorted(set(after) - set(before)) + sorted(key for key in before if after.get(key) != before[key])
        problems.append(f"files written or changed: {written[:8]}")
    return problems


def try_case(case: Case, folder: Path, model_dir: Path, seed: int) -> list[str]:
    """Make ``case`` in the empty ``folder`` from ``seed``, run it, and return its problems."""
    space = Workspace(folder, model_dir, random.Random(f"{seed}/{case.name}"))
    invocation = case.make(space)
    before = listing(folder)
    status, stderr = run_invocation(invocation, folder)
    return judge(invocation, status, stderr, before, listing(folder))


def main(argv: list[str] | None = None) -> int:
    """Try every case; print each verdict and the two figures; exit status 1 if any case failed."""
    parser = argparse.ArgumentParser(description="Fuzz the training command line with malformed inputs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocess", action="store_true", help="also the launch.sh / python subprocess cases")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    from tests.tiny_models import build_bpe_tokenizer, save_tiny_llama

    cases = CASES + (SUBPROCESS_CASES if args.subprocess else [])
    failed = 0
    with tempfile.TemporaryDirectory() as work:
        model_dir = save_tiny_llama(Path(work) / "model", build_bpe_tokenizer())
        for index, case in enumerate(cases):
            folder = Path(work) / f"case-{index:03d}"
            folder.mkdir()
            problems = try_case(case, folder, model_dir, args.seed)
            failed += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {case.name}" + (f": {'; '.join(problems)}" if problems else ""),
                  flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    command = f"PYTHONPATH=. python -m tests.fuzz_inputs --seed {args.seed}" + (" --subprocess" if args.subprocess else "")
    print(f"\nmalformed inputs tried: {len(cases)}; ended in one line naming the file, line or key "
          f"(exit 2, no traceback, nothing written): {len(cases) - failed}\n({command})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
