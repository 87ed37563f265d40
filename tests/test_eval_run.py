"""The evaluation.run CLI end to end on a tiny random Llama, and the report writers."""

import json
import shutil

import numpy as np
import pytest

from data.formats import write_task
from evaluation.report import format_markdown_table, write_report
from evaluation.run import main
from evaluation.metrics import main_metric_mean
from evaluation.tasks import evaluate_task, resolve_tasks
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


def test_markdown_table_ends_with_each_labels_mean_of_main_metrics():
    # Toy counts S1 and S2 apart: a's mean is (0.5 + 0.75 + 0.25) / 3, b's (0.2 + 1.0 + 0.0) / 3.
    records = [{"label": "a", "task": "r", "metrics": {"ndcg@10": 0.5, "mrr@10": 0.9}, "main_metrics": ["ndcg@10"]},
               {"label": "a", "task": "toy", "metrics": {"S1": 0.75, "S2": 0.25}, "main_metrics": ["S1", "S2"]},
               {"label": "b", "task": "r", "metrics": {"ndcg@10": 0.2, "mrr@10": 0.3}, "main_metrics": ["ndcg@10"]},
               {"label": "b", "task": "toy", "metrics": {"S1": 1.0, "S2": 0.0}, "main_metrics": ["S1", "S2"]}]
    assert format_markdown_table(records).splitlines()[-1] == "| mean | main metrics | **0.5000** | 0.4000 |"
    assert main_metric_mean([(["ndcg@10"], records[0]["metrics"]), (["S1", "S2"], records[1]["metrics"])]) == pytest.approx(0.5)
    # One task, or records without main metrics: no mean row.
    assert "| mean |" not in format_markdown_table(records[:1] + records[2:3])
    assert "| mean |" not in format_markdown_table([{**record, "main_metrics": None} for record in records])


def test_write_report_round_trips_records(tmp_path):
    records = [{"label": "a", "task": "t", "metrics": {"m": float(np.float32(0.5))}, "main_metrics": ["m"]}]
    paths = write_report(records, tmp_path / "r", "title", {"model": "x"})
    saved = json.loads(paths["json"].read_text())
    assert saved == {"title": "title", "model": "x", "records": records}
    assert paths["md"].read_text().startswith("# title\n\n| task | metric | a |")


class _EncodeAtWidth:
    """The direct path: every call encoded afresh with EchoEncoder.encode(..., dim=N)."""

    def __init__(self, encoder, dim):
        self.encoder, self.dim = encoder, dim

    def encode(self, texts, kind="query", instruction=None, batch_size=32):
        return self.encoder.encode(texts, kind=kind, instruction=instruction, batch_size=batch_size, dim=self.dim)


def test_dims_score_each_width_as_encode_with_dim_does_from_one_encoding(tmp_path, tiny_model_dir, sts_task, monkeypatch):
    calls = []
    real_encode = EchoEncoder.encode
    monkeypatch.setattr(EchoEncoder, "encode", lambda self, *args, **kwargs: calls.append(1) or real_encode(self, *args, **kwargs))

    def run(dims: str, out):
        calls.clear()
        assert main(["--model", str(tiny_model_dir), "--template-sets", "echo", "--pooling", "mean", "--dims", dims,
                     "--tasks", f"{sts_task},toy", "--max-examples", "8", "--out", str(out)]) == 0
        return json.loads((out / "results.json").read_text()), len(calls)

    _, full_width_calls = run("full", tmp_path / "full")
    report, calls_for_three_widths = run("8,16,full", tmp_path / "out")
    assert calls_for_three_widths == full_width_calls  # every text encoded once for all widths
    cells = {(r["label"], r["task"]): r["metrics"] for r in report["records"]}
    assert [r["dim"] for r in report["records"]] == [8, 8, 16, 16, None, None] and report["dims"] == [8, 16, None]
    monkeypatch.setattr(EchoEncoder, "encode", real_encode)
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo", pooling="mean")
    toy = resolve_tasks(["toy"])["toy"]
    for dim in (8, 16):
        for task, folder in (("tiny-sts", sts_task), ("toy", toy)):
            expected = evaluate_task(_EncodeAtWidth(encoder, dim), folder, 8)
            assert cells[(f"echo/mean@{dim}", task)] == pytest.approx(expected, abs=1e-6)
    assert cells[("echo/mean", "tiny-sts")] == pytest.approx(evaluate_task(encoder, sts_task, 8), abs=1e-6)
    assert cells[("echo/mean@8", "tiny-sts")] != cells[("echo/mean", "tiny-sts")]


@pytest.mark.parametrize("dims, message", [("8,0", "--dims: expected positive widths or 'full', got '0'"),
                                           ("64", "--dims: [64] exceed the embedding width 32")])
def test_bad_dims_print_one_line(dims, message, tiny_model_dir, sts_task, capsys):
    assert main(["--model", str(tiny_model_dir), "--dims", dims, "--tasks", str(sts_task)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after transformers' loading bar
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}")
