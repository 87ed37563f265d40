"""read_examples on hand-written echo / flag / e5 files, including every malformed-row error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.formats import DataFormatError, TrainingExample, read_examples, write_task


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_echo_rows_keep_fields_and_row_values_win(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps({"query": "q1", "positive": "p1", "negatives": ["n1", "n2"]}),
            "",
            json.dumps({"query": "q2", "positive": "p2", "negatives": [], "instruction": "own", "dataset": "other"}),
            json.dumps({"query": "q3", "positive": "p3"}),
        ],
    )
    examples = read_examples(path, "echo", dataset="wn", instruction="caller")
    assert examples == [
        TrainingExample("q1", "p1", ("n1", "n2"), "caller", "wn"),
        TrainingExample("q2", "p2", (), "own", "other"),
        TrainingExample("q3", "p3", (), "caller", "wn"),
    ]


def test_echo_round_trips_through_to_json(tmp_path: Path) -> None:
    original = TrainingExample("a query", "a doc", ("neg",), "Retrieve it", "set")
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(original.to_json())])
    assert read_examples(path, "echo", dataset="ignored") == [original]


def test_num_negatives_keeps_the_first_ones(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"query": "q", "positive": "p", "negatives": ["a", "b", "c"]})])
    assert read_examples(path, "echo", dataset="d", num_negatives=2)[0].negatives == ("a", "b")
    assert read_examples(path, "echo", dataset="d", num_negatives=0)[0].negatives == ()


def test_flag_rows_give_one_example_per_positive(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "flag.jsonl",
        [
            json.dumps({"query": "q", "pos": ["p1", "p2"], "neg": ["n"], "prompt": "Represent this"}),
            json.dumps({"query": "r", "pos": ["p3"], "neg": []}),
        ],
    )
    examples = read_examples(path, "flag", dataset="fe", instruction="caller")
    assert examples == [
        TrainingExample("q", "p1", ("n",), "Represent this", "fe"),
        TrainingExample("q", "p2", ("n",), "Represent this", "fe"),
        TrainingExample("r", "p3", (), "caller", "fe"),
    ]


def test_e5_rows_take_the_callers_instruction(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "msmarco.jsonl", [json.dumps({"query": "q", "positive": "p", "negative": "n"})])
    examples = read_examples(path, "e5", dataset="msmarco", instruction="Given a web search query, retrieve")
    assert examples == [TrainingExample("q", "p", ("n",), "Given a web search query, retrieve", "msmarco")]


@pytest.mark.parametrize(
    ("fmt", "bad_line", "message"),
    [
        ("echo", "{not json", "train.jsonl:2: invalid JSON"),
        ("echo", "[1, 2]", "train.jsonl:2: row must be a JSON object"),
        ("echo", json.dumps({"query": "q", "negatives": []}), "train.jsonl:2: 'positive' must be a non-empty string"),
        ("echo", json.dumps({"query": "  ", "positive": "p"}), "train.jsonl:2: 'query' must be a non-empty string"),
        ("echo", json.dumps({"query": 3, "positive": "p"}), "train.jsonl:2: 'query' must be a non-empty string"),
        ("echo", json.dumps({"query": "q", "positive": "p", "negatives": "n"}), "train.jsonl:2: 'negatives' must be a list"),
        ("echo", json.dumps({"query": "q", "positive": "p", "negatives": ["n", ""]}), "train.jsonl:2: 'negatives'[1]"),
        ("echo", json.dumps({"query": "q", "positive": "p", "instruction": 5}), "train.jsonl:2: 'instruction'"),
        ("flag", json.dumps({"query": "q", "pos": "p", "neg": []}), "train.jsonl:2: 'pos' must be a list"),
        ("flag", json.dumps({"query": "q", "pos": [], "neg": []}), "train.jsonl:2: 'pos' must hold at least one"),
        ("e5", json.dumps({"query": "q", "positive": "p", "negative": 7}), "train.jsonl:2: 'negative' must be"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, fmt: str, bad_line: str, message: str) -> None:
    good = {"echo": {"query": "q", "positive": "p"}, "flag": {"query": "q", "pos": ["p"]}, "e5": {"query": "q", "positive": "p"}}
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(good[fmt]), bad_line, json.dumps(good[fmt])])
    with pytest.raises(DataFormatError) as raised:
        read_examples(path, fmt, dataset="d")  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_too_few_negatives_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps({"query": "q", "positive": "p", "negatives": ["a", "b"]}),
            json.dumps({"query": "q", "positive": "p", "negatives": ["a"]}),
        ],
    )
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: needs 2 hard negatives"):
        read_examples(path, "echo", dataset="d", num_negatives=2)


def test_whole_file_is_validated_before_returning(tmp_path: Path) -> None:
    rows = [json.dumps({"query": f"q{i}", "positive": "p"}) for i in range(50)] + ['{"query": "q"}']
    path = write_lines(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"train.jsonl:51:"):
        read_examples(path, "echo", dataset="d")


def test_empty_file_and_unknown_format_are_errors(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataFormatError, match="empty.jsonl: no examples"):
        read_examples(empty, "echo", dataset="d")
    with pytest.raises(ValueError, match="unknown example format 'bge'"):
        read_examples(empty, "bge", dataset="d")  # type: ignore[arg-type]


def test_hf_path_reads_a_saved_dataset_folder(tmp_path: Path) -> None:
    import datasets

    rows = {"query": ["q1", "q2"], "pos": [["p1"], ["p2", "p3"]], "neg": [["n1"], ["n2"]]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    examples = read_examples(f"hf:{tmp_path / 'saved'}:train", "flag", dataset="hf", num_negatives=1)
    assert [(e.query, e.positive, e.negatives) for e in examples] == [
        ("q1", "p1", ("n1",)),
        ("q2", "p2", ("n2",)),
        ("q2", "p3", ("n2",)),
    ]


def test_hf_path_errors_name_the_row(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"query": ["q", ""], "positive": ["p", "p"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataFormatError, match=r"saved:2: 'query'"):
        read_examples(f"hf:{tmp_path / 'saved'}", "e5", dataset="d")


def test_write_task_checks_type_files_and_rows(tmp_path: Path) -> None:
    meta = {
        "name": "toy",
        "type": "sts",
        "instruction": "Retrieve semantically similar text",
        "symmetric": True,
        "source": "hand-written",
        "license": "CC0",
        "description": "two pairs",
    }
    counts = write_task(tmp_path / "toy", meta, {"pairs.jsonl": [{"text1": "a", "text2": "b", "score": 0.5}] * 2})
    assert counts == {"pairs.jsonl": 2}
    assert json.loads((tmp_path / "toy" / "task.json").read_text()) == meta
    with pytest.raises(ValueError, match=r"task 'toy': pairs.jsonl row 1 lacks \['score'\]"):
        write_task(tmp_path / "bad", meta, {"pairs.jsonl": [{"text1": "a", "text2": "b"}]})
    with pytest.raises(ValueError, match="task 'toy': files"):
        write_task(tmp_path / "bad", meta, {"items.jsonl": [{"text": "a", "label": "x"}]})
