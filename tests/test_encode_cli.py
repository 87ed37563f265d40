"""python -m models.encode: its .npy and .jsonl equal EchoEncoder.encode, and bad input ends in one line, writing nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import EchoEncoder
from models.encode import main
from models.encoder import ECHO_CONFIG
from models.templates import get_template_set

TEXTS = ["where do birds fly in winter?", "cats", " ".join(["the quick brown fox jumps over the lazy dog"] * 4),
         "a sleepy hound"]


@pytest.fixture(scope="module")
def instruct_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as an export of echo_instruct: its query and document templates differ, and queries take an instruction."""
    folder = tmp_path_factory.mktemp("instruct") / "model"
    shutil.copytree(tiny_model_dir, folder)
    echo_config = {"templates": get_template_set("echo_instruct").to_dict(), "pooling": "mean", "max_length": None}
    (folder / ECHO_CONFIG).write_text(json.dumps(echo_config))
    return folder


def _encode(model_dir: Path, input_file: Path, out: Path, *options: str) -> int:
    return main(["--model", str(model_dir), "--input", str(input_file), "--out", str(out), "--dtype", "float32",
                 *options])


@pytest.mark.parametrize("kind, instruction", [("query", "Find the sentence about animals"), ("document", None)])
def test_npy_output_equals_encode(instruct_model_dir, tmp_path, capsys, kind, instruction):
    input_file = tmp_path / "texts.txt"
    input_file.write_text("".join(text + "\n" for text in TEXTS))
    options = ["--kind", kind] + (["--instruction", instruction] if instruction else [])
    assert _encode(instruct_model_dir, input_file, tmp_path / "vectors.npy", *options, "--max-tokens", "96",
                   "--batch-size", "2") == 0
    stderr = capsys.readouterr().err
    assert " texts/s" in stderr  # the progress bar counts texts
    assert stderr.strip().splitlines()[-1] == f"wrote {len(TEXTS)} embeddings of dimension 32 to {tmp_path / 'vectors.npy'}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["texts.txt", "vectors.npy"]

    encoder = EchoEncoder.from_pretrained(str(instruct_model_dir), dtype="float32")
    expected = encoder.encode(TEXTS, kind=kind, instruction=instruction)
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-6, rtol=0)
    # The options changed the vectors, so the equality above shows they were honoured.
    assert not np.allclose(expected, encoder.encode(TEXTS), atol=1e-3)


def test_jsonl_output_keeps_order_text_and_ids(tiny_model_dir, tmp_path):
    rows = [{"id": "q1", "text": TEXTS[0]}, {"text": TEXTS[1], "lang": "en"}, {"id": 7, "text": TEXTS[2]},
            {"id": None, "text": TEXTS[3]}]
    input_file = tmp_path / "texts.jsonl"
    # A byte-order mark and a blank line, as hand-edited files have: neither is a row.
    input_file.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(row) for row in rows[:2]).encode()
                           + b"\n\n" + "\n".join(json.dumps(row) for row in rows[2:]).encode() + b"\n")
    assert _encode(tiny_model_dir, input_file, tmp_path / "vectors.jsonl", "--kind", "document") == 0

    expected = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32").encode(TEXTS, kind="document")
    written = [json.loads(line) for line in (tmp_path / "vectors.jsonl").read_text().splitlines()]
    assert [{key: value for key, value in row.items() if key != "embedding"} for row in written] == [
        {"id": "q1", "text": TEXTS[0]}, {"text": TEXTS[1]}, {"id": 7, "text": TEXTS[2]}, {"id": None, "text": TEXTS[3]}]
    np.testing.assert_allclose(np.array([row["embedding"] for row in written], dtype=np.float32), expected,
                               atol=1e-6, rtol=0)


# Input files of the bad-input cases, written into each case's empty folder ({dir} in the arguments).
BAD_INPUT_FILES = {"empty.txt": b"", "blank.jsonl": b"\n  \n", "bad-utf8.txt": b"fine\nbroken \xff byte\n",
                   "gap.txt": b"one\n\nthree\n", "bad-json.jsonl": b'{"text": "ok"}\n{"text": \n',
                   "list-row.jsonl": b"[1, 2]\n", "no-text.jsonl": b'{"id": 1}\n', "texts.csv": b"a,b\n",
                   "good.txt": b"one\ntwo\n"}
BAD_INPUT_FOLDERS = ("folder.txt", "folder.npy")
GOOD = ["--input", "{dir}/good.txt"]
OUT = ["--out", "{dir}/vectors.npy"]


@pytest.mark.parametrize("arguments, message", [
    pytest.param(["--input", "{dir}/missing.txt", *OUT], r"missing\.txt: no such file$", id="missing file"),
    pytest.param(["--input", "{dir}/folder.txt", *OUT], r"folder\.txt: is a folder, not a file$", id="folder input"),
    pytest.param(["--input", "{dir}/empty.txt", *OUT], r"empty\.txt: no texts$", id="empty file"),
    pytest.param(["--input", "{dir}/blank.jsonl", *OUT], r"blank\.jsonl: no texts$", id="blank jsonl"),
    pytest.param(["--input", "{dir}/bad-utf8.txt", *OUT], r"bad-utf8\.txt:2: not valid UTF-8", id="bad UTF-8"),
    pytest.param(["--input", "{dir}/gap.txt", *OUT], r"gap\.txt:2: empty line", id="empty line"),
    pytest.param(["--input", "{dir}/bad-json.jsonl", *OUT], r"bad-json\.jsonl:2: invalid JSON", id="bad JSON"),
    pytest.param(["--input", "{dir}/list-row.jsonl", *OUT], r"list-row\.jsonl:1: row must be a JSON object, got list",
                 id="row not an object"),
    pytest.param(["--input", "{dir}/no-text.jsonl", *OUT], r"no-text\.jsonl:1: 'text' must be a non-empty string",
                 id="row without text"),
    pytest.param(["--input", "{dir}/texts.csv", *OUT], r"--input .*texts\.csv: unknown suffix '\.csv'",
                 id="input suffix"),
    pytest.param([*GOOD, "--out", "{dir}/vectors.csv"], r"--out .*vectors\.csv: unknown suffix '\.csv'",
                 id="output suffix"),
    pytest.param([*GOOD, "--out", "{dir}/nowhere/v.npy"], r"--out .*nowhere is not an existing folder$",
                 id="output folder missing"),
    pytest.param([*GOOD, "--out", "{dir}/good.txt/v.npy"], r"--out .*good\.txt is not an existing folder$",
                 id="output folder is a file"),
    pytest.param([*GOOD, "--out", "{dir}/folder.npy"], r"--out .*folder\.npy: is a folder$", id="output is a folder"),
    pytest.param([*GOOD, *OUT, "--kind", "passage"], r"argument --kind: invalid choice: 'passage'", id="unknown kind"),
    pytest.param([*GOOD, *OUT, "--max-tokens", "0"], r"argument --max-tokens: must be a positive integer, got '0'$",
                 id="zero budget"),
    pytest.param([*GOOD, *OUT, "--max-tokens", "many"],
                 r"argument --max-tokens: must be a positive integer, got 'many'$", id="budget not a number"),
    pytest.param(["--input", "{dir}/good.txt"], r"the following arguments are required: --out$", id="no output"),
])
def test_bad_input_ends_in_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, arguments, message):
    for name, data in BAD_INPUT_FILES.items():
        (tmp_path / name).write_bytes(data)
    for name in BAD_INPUT_FOLDERS:
        (tmp_path / name).mkdir()
    before = sorted(tmp_path.rglob("*"))
    argv = ["--model", str(tiny_model_dir)] + [argument.format(dir=tmp_path) for argument in arguments]
    assert main(argv) == 2
    _assert_one_error_line(capsys.readouterr().err, message)
    assert sorted(tmp_path.rglob("*")) == before


def test_an_unwritable_output_folder_is_bad_input(tiny_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "good.txt").write_text("one\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # Root (as in CI) may write into any folder, so the permission check is made to see what a user would.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    assert _encode(tiny_model_dir, tmp_path / "good.txt", locked / "v.npy") == 2
    _assert_one_error_line(capsys.readouterr().err, r"--out .*locked is not writable$")
    assert list(locked.iterdir()) == []


def _assert_one_error_line(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(message, lines[0]), lines[0]
