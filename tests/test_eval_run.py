"""The evaluation.run CLI end to end on a tiny random Llama, and the report writers."""

import json
import shutil

import numpy as np
import pytest

from data.formats import write_task
from evaluation.report import format_markdown_table, write_report
from evaluation.run import main
from evaluation.tasks import evaluate_task
from models import EchoEncoder
from models.templates import get_template_set


@pytest.fixture
def sts_task(tmp_path):
    pairs = [("a red apple", "a red fruit", 4.5), ("a red apple", "the cold sea", 0.5), ("a dog barks", "a hound barks", 4.0),
             ("a dog barks", "rivers flow", 1.0), ("birds fly south", "birds migrate", 4.2), ("cats sleep", "the sea", 0.2)]
    write_task(tmp_path / "tiny-sts", {
        "name": "tiny-sts", "type": "sts", "instruction": "Retrieve semantically similar text", "symmetric": True,
        "source": "test", "license": "CC0", "description": "six pairs"},
        {"pairs.jsonl": [{"text1": a, "text2": b, "score": s} for a, b, s in pairs]})
    return tmp_path / "tiny-sts"


def test_run_writes_every_template_set_pooling_task_cell(tmp_path, tiny_model_dir, sts_task, monkeypatch, capsys):
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    status = main(["--model", str(tiny_model_dir), "--template-sets", "classical,echo", "--pooling", "mean,last",
                   "--tasks", f"{sts_task},toy", "--max-examples", "8", "--batch-size", "8", "--out", str(out)])
    assert status == 0
    report = json.loads((out / "results.json").read_text())
    cells = {(r["label"], r["task"]): r["metrics"] for r in report["records"]}
    labels = ["classical/mean", "classical/last", "echo/mean", "echo/last"]
    assert set(cells) == {(label, task) for label in labels for task in ("tiny-sts", "toy")}
    assert set(cells[("echo/mean", "toy")]) == {"S1", "S2"}
    # Records name the template set, and under its old key "mode" for readers of older reports.
    assert all(r["label"] == f"{r['template_set']}/{r['pooling']}" and r["mode"] == r["template_set"]
               for r in report["records"])
    assert report["max_examples"] == 8
    markdown = (out / "results.md").read_text()
    assert "| task | metric | " + " | ".join(labels) + " |" in markdown
    assert "| tiny-sts | spearman |" in markdown and "| toy | S2 |" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| toy | S1 |" in capsys.readouterr().out

    # Switching template set/pooling on the loaded weights gives what a fresh load in that setting gives.
    fresh = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo", pooling="last")
    assert evaluate_task(fresh, sts_task, 8, 8) == pytest.approx(cells[("echo/last", "tiny-sts")], abs=1e-6)


def test_export_defaults_to_its_own_template_set_and_pooling(tmp_path, tiny_model_dir, sts_task):
    export = tmp_path / "export"
    shutil.copytree(tiny_model_dir, export)
    (export / "echo_config.json").write_text(json.dumps(
        {"templates": get_template_set("echo_instruct").to_dict(), "pooling": "last", "max_length": None}))
    assert main(["--model", str(export), "--tasks", str(sts_task), "--out", str(tmp_path / "out")]) == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    assert [r["label"] for r in records] == ["echo_instruct/last"]


@pytest.mark.parametrize("argv, message", [
    (["--pooling", "max"], "error: --pooling: pooling must be one of mean, last, got 'max'"),
    (["--template-sets", "echo,bogus"], "error: unknown template set 'bogus'"),
    (["--template-sets", ""], "error: --template-sets is empty"),
    (["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
    (["--tasks", ","], "error: --tasks is empty"),
])
def test_bad_arguments_print_one_line(argv, message, tiny_model_dir, capsys):
    assert main(["--model", str(tiny_model_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_old_modes_flag_still_works_with_one_warning_line(tmp_path, tiny_model_dir, sts_task, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model_dir), "--modes", "classical", "--pooling", "last", "--tasks", str(sts_task),
                 "--out", str(out)]) == 0
    assert [r["label"] for r in json.loads((out / "results.json").read_text())["records"]] == ["classical/last"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --modes is deprecated; use --template-sets"]


def test_missing_task_folder_prints_one_line(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "task.json").write_text('{"name": "broken"')
    assert main(["--model", str(tiny_model_dir), "--tasks", str(tmp_path / "broken"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'broken' / 'task.json'}: invalid JSON (Expecting ',' delimiter)"


def test_markdown_table_bolds_the_best_and_marks_missing_cells():
    records = [{"label": "echo/mean", "task": "t", "metrics": {"m": 0.5, "n": 0.1}},
               {"label": "classical/mean", "task": "t", "metrics": {"m": 0.25}}]
    assert format_markdown_table(records).splitlines() == [
        "| task | metric | echo/mean | classical/mean |",
        "|---|---|---:|---:|",
        "| t | m | **0.5000** | 0.2500 |",
        "| t | n | **0.1000** | – |",
    ]
    assert format_markdown_table(records, metrics=["n"]).splitlines()[2:] == ["| t | n | **0.1000** | – |"]


def test_write_report_round_trips_records(tmp_path):
    records = [{"label": "a", "task": "t", "metrics": {"m": float(np.float32(0.5))}, "main_metrics": ["m"]}]
    paths = write_report(records, tmp_path / "r", "title", {"model": "x"})
    saved = json.loads(paths["json"].read_text())
    assert saved == {"title": "title", "model": "x", "records": records}
    assert paths["md"].read_text().startswith("# title\n\n| task | metric | a |")
