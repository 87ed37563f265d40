"""Sweeps: wandb-format files read and enumerated, the wandb executor's commands and registered
configuration (no network), and the local executor end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

import train.launchers.sweep as sweep_launcher
from evaluation.report import plot_bar_chart
from evaluation.tasks import evaluate_task, resolve_tasks
from models import EchoEncoder
from train.launchers.sweep import SweepError, load_sweep, main, sweep_points, write_sweep_report
from train.tracking import run_dir
from tests.tiny_models import write_tiny_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "ablation.yaml"


def test_the_shipped_ablation_grid_covers_every_factor():
    spec = load_sweep(SHIPPED)
    points = sweep_points(spec)
    assert len(points) == 3 * 2 * 2 * 2 * 2
    template_sets = {"echo_instruct", "echo_instruct_compute_matched", "classical_instruct"}
    for key, values in [("model.template_set", template_sets), ("model.pooling", {"mean", "last"}),
                        ("lora.r", {8, 16}), ("train.temperature", {0.02, 0.05}), ("lora.trainable_eos", {False, True})]:
        assert {point[key] for point in points} == values
    assert len({json.dumps(point, sort_keys=True) for point in points}) == len(points)
    task = spec["metric"]["name"].split("/")[1]
    assert all(point["export.eval_tasks"] == [task] for point in points)


def test_random_search_draws_run_cap_seeded_points(tmp_path):
    sweep = {"method": "random", "run_cap": 5, "metric": {"name": "m", "goal": "maximize"},
             "command": ["python", "x.py", "--config", "c.yaml"],
             "parameters": {"train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                            "lora.r": {"values": [4, 8]}, "train.max_steps": {"value": 3}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    spec = load_sweep(tmp_path / "s.yaml")
    points = sweep_points(spec, seed=1)
    assert points == sweep_points(spec, seed=1) and len(points) == 5
    assert all(1e-4 <= p["train.lr"] <= 1e-2 and p["lora.r"] in (4, 8) and p["train.max_steps"] == 3 for p in points)


@pytest.mark.parametrize("change, message", [
    ({"method": "bayes"}, "method must be 'grid' or 'random'"),
    ({"metric": {"name": "m"}}, "metric needs a name and a goal"),
    ({"parameters": {"lora.r": 8}}, r"parameters.lora.r needs"),
    ({"command": ["python", "x.py"]}, "command must name the base config"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, change, message):
    sweep = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"lora.r": {"values": [8]}},
             "command": ["python", "x.py", "--config", "c.yaml"], **change}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(SweepError, match=message):
        load_sweep(tmp_path / "s.yaml")


def test_local_executor_runs_every_point_and_reports_the_metric(tmp_path, tiny_model_dir, capsys):
    write_tiny_dataset(tmp_path / "a.jsonl", 16, seed=1)
    base = {"model": {"name": str(tiny_model_dir), "max_length": 128, "precision": "fp32"},
            "lora": {"r": 4, "alpha": 8},
            "data": {"mix": None, "dev": None, "datasets": [{"name": "a", "path": str(tmp_path / "a.jsonl")}]},
            "train": {"batch_size": 4, "lr": 1e-2}, "wandb": {"mode": "disabled"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "tiny", "method": "grid", "metric": {"name": "eval/toy/S2", "goal": "maximize"},
             "command": ["${env}", "${interpreter}", "${program}", "--config", str(tmp_path / "base.yaml"), "${args_no_hyphens}"],
             "parameters": {"model.template_set": {"values": ["echo_instruct", "classical_instruct"]},
                            "model.pooling": {"values": ["mean", "last"]},
                            "train.max_steps": {"value": 2}, "export.eval_tasks": {"value": ["toy"]},
                            "export.eval_max_examples": {"value": 6}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main([str(tmp_path / "sweep.yaml"), "--executor", "local", "--out", str(tmp_path / "out"), "train.seed=3"]) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    toy_task = resolve_tasks(["toy"])["toy"]
    # yaml.safe_dump sorted the parameters, so pooling comes first in the file and in every label.
    assert [r["label"] for r in report["results"]] == [
        f"pooling={pooling},template_set={templates}"
        for pooling in ("mean", "last") for templates in ("echo_instruct", "classical_instruct")]
    for index, result in enumerate(report["results"]):
        export = Path(result["run_dir"]) / "export"
        # The reported metric is the point's own: recomputed here from its export (fp32 runs).
        rescored = evaluate_task(EchoEncoder.from_pretrained(str(export), dtype="float32"), toy_task, max_examples=6)
        assert result["eval/toy/S2"] == pytest.approx(rescored["S2"], abs=1e-9)
        exported = json.loads((export / "echo_config.json").read_text())
        assert (exported["templates"]["name"], exported["pooling"]) == (result["point"]["model.template_set"], result["point"]["model.pooling"])
        run_config = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())
        assert run_config["train"]["seed"] == 3
        # One group for the sweep; each run named after the sweep and its point.
        assert run_config["wandb"]["group"] == "tiny"
        assert run_config["wandb"]["name"] == f"tiny-{index:03d} {result['label']}"
        # The cost beside the metric: the mean of the prompt tokens the run logged per step.
        logged = [json.loads(line) for line in (Path(result["run_dir"]) / "log.jsonl").read_text().splitlines()]
        tokens = [record["train/tokens"] for record in logged if "train/tokens" in record]
        assert len(tokens) == 2 and result["tokens_per_step"] == sum(tokens) / 2
    # The same batches (same seed): echo's two copies cost about twice classical's one.
    echo, classical = report["results"][0]["tokens_per_step"], report["results"][1]["tokens_per_step"]
    assert 1.5 * classical < echo < 2.5 * classical
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n| ") == 5 and "**" in table and f"| {echo:.0f} |" in table
    assert (tmp_path / "out" / "results.png").stat().st_size > 1000
    assert "report:" in capsys.readouterr().out


def test_a_failing_run_stops_the_sweep_with_one_line(tmp_path, capsys):
    sweep = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"lora.r": {"values": [8]}},
             "command": ["python", "x.py", "--config", str(tmp_path / "missing.yaml")]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main([str(tmp_path / "s.yaml"), "--executor", "local", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 0 (r=8) failed" in err[0] and "missing.yaml" in err[0]


def _fake_wandb(monkeypatch, sweep_returncode: int = 0, sweep_output: str = "") -> list[list[str]]:
    """Replace the launcher's subprocess.run: record each command, answer `wandb sweep` like wandb does."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if command[:2] == ["wandb", "sweep"]:
            return subprocess.CompletedProcess(command, sweep_returncode, stdout="", stderr=sweep_output)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep_launcher.subprocess, "run", run)
    return calls


def test_wandb_executor_registers_the_file_with_the_runs_arguments_and_runs_an_agent(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"mix": None, "datasets": [{"name": "a", "path": "a.jsonl"}]},
                                                        "wandb": {"project": "echo-test"}}))
    sweep = {"name": "tiny", "method": "grid", "metric": {"name": "eval/toy/S2", "goal": "maximize"},
             "program": "train/finetune.py",
             "command": ["${env}", "${interpreter}", "${program}", "--config", str(tmp_path / "base.yaml"), "${args_no_hyphens}"],
             "parameters": {"model.pooling": {"values": ["mean", "last"]}, "train.max_steps": {"value": 2}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    # wandb colours the agent command when it writes to a terminal.
    calls = _fake_wandb(monkeypatch, sweep_output="wandb: Creating sweep from: sweep.yaml\n"
                        "wandb: Run sweep agent with: \x1b[33mwandb agent me/echo-test/abc123\x1b[0m\n")
    out = tmp_path / "out"
    assert main([str(tmp_path / "sweep.yaml"), "--executor", "wandb", "--out", str(out), "--max-runs", "3", "train.seed=3"]) == 0
    assert calls == [["wandb", "sweep", "--project", "echo-test", str(out / "sweep.yaml")],
                     ["wandb", "agent", "--count", "3", "me/echo-test/abc123"]]
    # The registered file is the sweep file, its command extended by what every run gets.
    assert yaml.safe_load((out / "sweep.yaml").read_text()) == {
        **sweep, "command": [*sweep["command"], "train.seed=3", f"output_dir={out}", "wandb.group=tiny"]}


def test_a_failing_wandb_sweep_ends_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"mix": None, "datasets": [{"name": "a", "path": "a.jsonl"}]}}))
    sweep = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"lora.r": {"values": [8]}},
             "command": ["python", "x.py", "--config", str(tmp_path / "base.yaml")]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    calls = _fake_wandb(monkeypatch, sweep_returncode=1, sweep_output="wandb: ERROR No API key configured\n")
    assert main([str(tmp_path / "s.yaml"), "--executor", "wandb", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "error: wandb sweep failed: wandb: ERROR No API key configured\n"
    assert [command[:2] for command in calls] == [["wandb", "sweep"]]  # no agent


def test_an_agent_run_writes_into_a_folder_named_by_its_run_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "r1")
    assert run_dir(tmp_path / "runs") == tmp_path / "runs"  # a run id alone (wandb resume) is not a sweep
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    assert run_dir(tmp_path / "runs") == tmp_path / "runs" / "r1"


def test_the_sweep_chart_has_a_row_per_point_and_the_metric_on_its_axis(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(sweep_launcher, "plot_bar_chart", lambda *args, **kwargs: figures.append(plot_bar_chart(*args, **kwargs)))
    metric = "eval/wordnet-gloss-retrieval/ndcg@10"
    spec = {"name": "s", "metric": {"name": metric, "goal": "maximize"},
            "parameters": {"lora.r": {"values": [4, 8, 16]}, "train.max_steps": {"value": 2}}}
    results = [{"index": index, "label": f"r={r}", "point": {"lora.r": r, "train.max_steps": 2}, metric: value,
                "tokens_per_step": 1000.0} for index, (r, value) in enumerate([(4, 0.25), (8, 0.5), (16, 0.375)])]
    paths = write_sweep_report(spec, results, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    (axes,) = figure.axes  # one metric: one task, one panel
    assert [label.get_text() for label in axes.get_yticklabels()] == ["r=4", "r=8", "r=16"]
    assert [bar.get_width() for bar in axes.patches] == [0.25, 0.5, 0.375]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("ndcg@10", "point (varied keys)")
    assert axes.get_legend().get_title().get_text() == "eval/wordnet-gloss-retrieval"
    assert "| 1 | 8 | **0.5000** | 1000 |" in paths["md"].read_text()
