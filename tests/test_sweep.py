"""Sweeps: wandb-format files read and enumerated, and the local executor end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evaluation.tasks import evaluate_task, resolve_tasks
from models import EchoEncoder
from train.launchers.sweep import SweepError, load_sweep, main, sweep_points
from tests.tiny_models import write_tiny_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "ablation.yaml"


def test_the_shipped_ablation_grid_covers_every_factor():
    spec = load_sweep(SHIPPED)
    points = sweep_points(spec)
    assert len(points) == 2 * 2 * 2 * 2 * 2
    for key, values in [("model.template_set", {"echo_instruct", "classical_instruct"}), ("model.pooling", {"mean", "last"}),
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
    for result in report["results"]:
        export = Path(result["run_dir"]) / "export"
        # The reported metric is the point's own: recomputed here from its export (fp32 runs).
        rescored = evaluate_task(EchoEncoder.from_pretrained(str(export), dtype="float32"), toy_task, max_examples=6)
        assert result["eval/toy/S2"] == pytest.approx(rescored["S2"], abs=1e-9)
        exported = json.loads((export / "echo_config.json").read_text())
        assert (exported["templates"]["name"], exported["pooling"]) == (result["point"]["model.template_set"], result["point"]["model.pooling"])
        assert yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())["train"]["seed"] == 3
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n| ") == 5 and "**" in table
    assert (tmp_path / "out" / "results.png").stat().st_size > 1000
    assert "report:" in capsys.readouterr().out


def test_a_failing_run_stops_the_sweep_with_one_line(tmp_path, capsys):
    sweep = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"lora.r": {"values": [8]}},
             "command": ["python", "x.py", "--config", str(tmp_path / "missing.yaml")]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main([str(tmp_path / "s.yaml"), "--executor", "local", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 0 (r=8) failed" in err[0] and "missing.yaml" in err[0]
