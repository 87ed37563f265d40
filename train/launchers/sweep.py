"""Ablation sweeps in wandb's sweep format, run by wandb when online and locally otherwise.

    ./launch.sh sweep configs/sweeps/ablation.yaml [key=value ...]
    python -m train.launchers.sweep configs/sweeps/ablation.yaml [--executor auto|local|wandb] [--max-runs N] [key=value ...]

A sweep file is a wandb sweep configuration: ``method`` (grid or random), ``metric``
(``name``, ``goal``), ``parameters`` (``values``, ``value``, or for random search a
``distribution`` with ``min``/``max``) and a ``command`` naming the base config after
``--config``; parameters are config keys, so wandb's ``${args_no_hyphens}`` passes them as
the ``section.key=value`` overrides ``train/finetune.py`` takes. Trailing ``key=value``
arguments apply to every run.

``wandb`` registers the sweep (``wandb sweep``) and runs an agent (``wandb agent``). The
``local`` executor reads the same file: it enumerates the grid (or draws ``run_cap``
seeded random points), runs each point as its own ``train/finetune.py`` process logged to
wandb in the sweep's group, reads the metric the run logged at its end, and writes
``results.json``, ``results.md`` and ``results.png`` (metric per point) into
``runs/sweeps/<name>/``. ``auto`` is wandb when a key is configured, else local.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from train.tracking import wandb_mode

FINETUNE = Path(__file__).resolve().parents[1] / "finetune.py"


class SweepError(ValueError):
    """A bad sweep file or argument; reported as one line naming the file and key."""


def load_sweep(path: Path) -> dict[str, Any]:
    """Read and check a sweep file; raises SweepError naming the file and the bad key."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SweepError(f"{path}: cannot read sweep file ({error})") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping")
    if spec.get("method") not in ("grid", "random"):
        raise SweepError(f"{path}: method must be 'grid' or 'random' (the local executor), got {spec.get('method')!r}")
    metric = spec.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or metric.get("goal") not in ("maximize", "minimize"):
        raise SweepError(f"{path}: metric needs a name and a goal (maximize or minimize)")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: parameters must map config keys to {{values: [...]}} or {{value: ...}}")
    for key, choice in parameters.items():
        if not isinstance(choice, dict) or not ({"values", "value", "distribution"} & set(choice)):
            raise SweepError(f"{path}: parameters.{key} needs 'values', 'value' or 'distribution'")
        if spec["method"] == "grid" and "distribution" in choice:
            raise SweepError(f"{path}: parameters.{key}: a grid needs 'values' or 'value', not a distribution")
    if spec["method"] == "random" and not isinstance(spec.get("run_cap"), int):
        raise SweepError(f"{path}: random search needs run_cap (the number of runs)")
    command = spec.get("command", [])
    if "--config" not in command or command.index("--config") + 1 >= len(command):
        raise SweepError(f"{path}: command must name the base config after --config")
    spec.setdefault("name", Path(path).stem)
    return spec


def sweep_points(spec: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """The runs of a sweep as {config key: value}: the full grid, or run_cap seeded random draws."""
    parameters = spec["parameters"]
    if spec["method"] == "grid":
        keys = list(parameters)
        choices = [parameters[key]["values"] if "values" in parameters[key] else [parameters[key]["value"]] for key in keys]
        return [dict(zip(keys, combination)) for combination in itertools.product(*choices)]
    rng = random.Random(seed)
    return [{key: _draw(choice, rng) for key, choice in parameters.items()} for _ in range(spec["run_cap"])]


def _draw(choice: dict[str, Any], rng: random.Random) -> Any:
    if "value" in choice:
        return choice["value"]
    if "values" in choice:
        return rng.choice(choice["values"])
    low, high = choice["min"], choice["max"]
    kind = choice["distribution"]
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "int_uniform":
        return rng.randint(low, high)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    raise SweepError(f"distribution {kind!r} is not supported by the local executor (uniform, int_uniform, log_uniform_values)")


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def point_label(point: dict[str, Any], varied: list[str]) -> str:
    """A short name from the varied keys only, e.g. 'mode=echo_instruct,pooling=mean,r=8'."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={point[key]}" for key in varied)


def run_local(spec: dict[str, Any], overrides: list[str], out_root: Path, max_runs: int | None) -> list[dict[str, Any]]:
    """Run every point as a train/finetune.py process; returns one result per point."""
    base_config = spec["command"][spec["command"].index("--config") + 1]
    points = sweep_points(spec)[:max_runs]
    varied = [key for key, choice in spec["parameters"].items() if "value" not in choice]
    metric = spec["metric"]["name"]
    results = []
    for index, point in enumerate(points):
        label = point_label(point, varied)
        run_dir = out_root / f"run-{index:03d}"
        command = [sys.executable, str(FINETUNE), "--config", base_config,
                   *(_override(key, value) for key, value in point.items()), *overrides,
                   f"output_dir={run_dir}", f"wandb.group={spec['name']}", f"wandb.name={spec['name']}-{index:03d}",
                   "train.resume=auto"]
        print(f"[{index + 1}/{len(points)}] {label}", flush=True)
        completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            last_line = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SweepError(f"run {index} ({label}) failed: {last_line}")
        logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        value = next((record[metric] for record in reversed(logged) if metric in record), None)
        if value is None:
            raise SweepError(f"run {index} ({label}) logged no {metric!r}; score the export with export.eval_tasks")
        results.append({"index": index, "label": label, "point": point, metric: value, "run_dir": str(run_dir)})
        print(f"    {metric} = {value:.4f}", flush=True)
    return results


def write_sweep_report(spec: dict[str, Any], results: list[dict[str, Any]], out_root: Path) -> dict[str, Path]:
    """results.json, results.md (one row per point, best in bold) and results.png (metric per point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, goal = spec["metric"]["name"], spec["metric"]["goal"]
    values = [result[metric] for result in results]
    best = max(values) if goal == "maximize" else min(values)
    varied = [key for key, choice in spec["parameters"].items() if "value" not in choice]
    lines = [f"# Sweep `{spec['name']}`: {metric} ({goal})", "",
             "| run | " + " | ".join(varied) + f" | {metric} |", "|---|" + "---|" * len(varied) + "---:|"]
    for result in results:
        cell = f"**{result[metric]:.4f}**" if result[metric] == best else f"{result[metric]:.4f}"
        lines.append(f"| {result['index']} | " + " | ".join(str(result["point"][key]) for key in varied) + f" | {cell} |")
    paths = {name: out_root / f"results.{name}" for name in ("json", "md", "png")}
    paths["json"].write_text(json.dumps({"sweep": spec, "results": results}, indent=2, default=str) + "\n")
    paths["md"].write_text("\n".join(lines) + "\n")
    figure, axes = plt.subplots(figsize=(8, 0.35 * len(results) + 1.5))
    axes.barh([result["label"] for result in results], values, color=["tab:orange" if v == best else "tab:blue" for v in values])
    axes.invert_yaxis()
    axes.set_xlabel(metric)
    axes.set_title(f"sweep {spec['name']}")
    axes.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    figure.savefig(paths["png"], dpi=120)
    plt.close(figure)
    return paths


def run_wandb(spec: dict[str, Any], overrides: list[str]) -> None:
    """Register the sweep with wandb and run an agent in this process's shell."""
    spec = {**spec, "command": [*spec["command"], *overrides]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(spec, handle)
    created = subprocess.run(["wandb", "sweep", "--project", "echo-embeddings", handle.name],
                             capture_output=True, text=True, check=True)
    sweep_path = next(line.split("wandb agent ")[-1].strip() for line in (created.stdout + created.stderr).splitlines()
                      if "wandb agent " in line)
    subprocess.run(["wandb", "agent", sweep_path], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.launchers.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep file in wandb's format (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value applied to every run")
    parser.add_argument("--executor", choices=["auto", "local", "wandb"], default="auto")
    parser.add_argument("--max-runs", type=int, default=None, help="local executor: run only the first N points")
    parser.add_argument("--out", type=Path, default=None, help="local executor: output folder (default runs/sweeps/<name>)")
    args = parser.parse_intermixed_args(argv)
    try:
        bad = [item for item in args.overrides if "=" not in item]
        if bad:
            raise SweepError(f"expected section.key=value, got {' '.join(bad)}")
        spec = load_sweep(args.sweep)
        executor = args.executor if args.executor != "auto" else ("wandb" if wandb_mode("auto") == "online" else "local")
        if executor == "wandb":
            run_wandb(spec, args.overrides)
            return 0
        out_root = args.out or Path("runs") / "sweeps" / spec["name"]
        out_root.mkdir(parents=True, exist_ok=True)
        results = run_local(spec, args.overrides, out_root, args.max_runs)
        paths = write_sweep_report(spec, results, out_root)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"report: {paths['md']} {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
