"""Bad input through the real training command line: every malformed input of tests/fuzz_inputs.py
ends in one line naming the file:line or key, exit code 2, no traceback, nothing written; odd
but valid inputs (BOM, CRLF, blank lines, a last line without newline, 1 MB texts, repeated
rows) are read as intended; and a bug keeps its traceback."""

from __future__ import annotations

import json
import random

import pytest
import yaml

import train.finetune as finetune
from data.formats import TrainingExample
from tests.fuzz_inputs import CASES, MEGABYTE, SUBPROCESS_CASES, Workspace, try_case
from train.config import load_config
from train.preflight import read_run_inputs

SEED = 0
# The launch.sh cases bash itself refuses start no Python: cheap enough for the default suite.
BASH_ONLY = {"launch/zero-stage", "launch/nproc-zero", "launch/unknown-option", "launch/missing-config",
             "launch/override-without-equals"}


def test_there_are_at_least_fifty_cases_over_every_kind_of_input():
    names = [case.name for case in CASES + SUBPROCESS_CASES]
    assert len(names) == len(set(names)) and len(CASES) >= 50
    kinds = {name.split("/")[0] for name in names}
    assert kinds == {"data", "task", "config", "override", "argv", "launch", "script", "preflight"}
    for fmt in ("echo", "flag", "e5", "hf", "jsonl"):  # every format of data/formats.py, and the file itself
        assert any(name.startswith(f"data/{fmt}-") for name in names), fmt


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_input_ends_in_one_line_before_anything_is_written(case, tmp_path, tiny_model_dir):
    assert try_case(case, tmp_path, tiny_model_dir, SEED) == []


@pytest.mark.parametrize("case", [case for case in SUBPROCESS_CASES if case.name in BASH_ONLY],
                         ids=sorted(BASH_ONLY, key=[case.name for case in SUBPROCESS_CASES].index))
def test_launch_flags_end_in_one_line(case, tmp_path, tiny_model_dir):
    assert try_case(case, tmp_path, tiny_model_dir, SEED) == []


@pytest.mark.slow
@pytest.mark.parametrize("case", [case for case in SUBPROCESS_CASES if case.name not in BASH_ONLY],
                         ids=[case.name for case in SUBPROCESS_CASES if case.name not in BASH_ONLY])
def test_malformed_input_through_launch_sh_and_python_ends_in_one_line(case, tmp_path, tiny_model_dir):
    """launch.sh's preflight catches what the launched processes would report through accelerate's traceback."""
    assert try_case(case, tmp_path, tiny_model_dir, SEED) == []


def test_a_seed_makes_the_same_cases_and_another_seed_other_ones(tmp_path, tiny_model_dir):
    def made(seed: int, name: str) -> list[tuple[str, dict[str, bytes]]]:
        """Each case's expected error location and files, with the folder's own path taken out."""
        made = []
        for case in CASES[:20]:
            folder = tmp_path / name / case.name.replace("/", "-")
            folder.mkdir(parents=True)
            invocation = case.make(Workspace(folder, tiny_model_dir, random.Random(f"{seed}/{case.name}")))
            files = {str(path.relative_to(folder)): path.read_bytes().replace(str(folder).encode(), b"")
                     for path in folder.rglob("*") if path.is_file()}
            made.append((invocation.where.replace(str(folder), ""), files))
        return made

    first = made(SEED, "first")
    assert first == made(SEED, "again")
    assert first != made(SEED + 1, "other")


def test_odd_but_valid_data_and_config_are_read_as_intended(tmp_path, tiny_model_dir):
    """What the fuzz cases leave out because it is valid, read by the training command's own reader."""
    space = Workspace(tmp_path, tiny_model_dir, random.Random(SEED))
    rows = [space.row("echo") for _ in range(6)]
    rows[2]["query"] = "q" * MEGABYTE  # a 1 MB text: valid, the tokenizer cuts it to model.max_length
    rows[4] = dict(rows[3])  # a repeated row: sources repeat verses and definitions; the loss masks duplicates
    lines = [json.dumps(row).encode() for row in rows]
    # A BOM, CRLF ends, blank lines, and a last line without its newline.
    content = b"\xef\xbb\xbf" + b"\r\n".join(lines[:3]) + b"\r\n\r\n  \n" + b"\n".join(lines[3:])
    data_file = space.write("odd.jsonl", content)
    config = space.config_dict(data_file)
    config["data"]["datasets"] = config["data"]["datasets"][:1]
    text = yaml.safe_dump(config, sort_keys=False).replace("\n", "\r\n")
    config_file = space.write("odd.yaml", b"\xef\xbb\xbf" + text.encode())

    inputs = read_run_inputs(load_config(config_file, ["train.lr=1e-3", "train.lr=2e-3"]), 1)
    assert inputs.data.examples == [TrainingExample(row["query"], row["positive"], tuple(row["negatives"]),
                                                    row["instruction"], "a") for row in rows]
    assert load_config(config_file, ["train.lr=1e-3", "train.lr=2e-3"]).train.lr == 2e-3  # the last override wins
    assert not space.output_dir.exists()


def test_a_bug_keeps_its_traceback(tmp_path, tiny_model_dir, monkeypatch):
    """The CLI turns only bad input into one line: a ValueError from a bug propagates."""
    space = Workspace(tmp_path, tiny_model_dir, random.Random(SEED))

    def broken_build(config, accelerator):
        raise ValueError("a bug inside the model code")

    monkeypatch.setattr(finetune, "build_model", broken_build)
    with pytest.raises(ValueError, match="a bug inside the model code"):
        finetune.cli(["--config", str(space.config())])
