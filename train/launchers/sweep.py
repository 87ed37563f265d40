"""Ablation sweeps in wandb's sweep format, run by wandb when online and locally otherwise.

    ./launch.sh sweep configs/sweeps/ablation.yaml [key=value ...]
    python -m train.launchers.sweep configs/sweeps/ablation.yaml [--executor auto|local|wandb] [--max-runs N] [key=value ...]

A sweep file is a wandb sweep configuration: ``method`` (grid or random), ``metric``
(``name``, ``goal``), ``parameters`` (``values``, ``value``, or for random search a
``distribution`` with ``min``/``max``) and a ``command`` naming the base config after
``--config``; parameters are config keys, so wandb's ``${args_no_hyphens}`` passes them as
the ``section.key=value`` overrides ``train/finetune.py`` takes. Trailing ``key=value``
arguments apply to every run.

Every run of a sweep is logged to wandb in the group named after the sweep, and writes into
a folder of its own under ``--out`` (default ``runs/sweeps/<name>/``).

``wandb`` registers the sweep (``wandb sweep``; the registered configuration, the file's with
the trailing overrides, ``output_dir`` and ``wandb.group`` appended to its command, is kept as
``sweep.yaml`` in the output folder) and runs an agent on it (``wandb agent``); each agent run
writes into ``<out>/<run id>/``. The ``local`` executor reads the same file: it enumerates the
grid (or draws ``run_cap`` seeded random points), runs each point as its own
``train/finetune.py`` process in ``<out>/run-NNN/``, named ``<sweep>-NNN <point>``, reads the
metric the run logged at its end and its mean prompt tokens per step (``train/tokens``, the
cost: full echo about twice classical, compute-matched echo about the same), and writes
``results.json``, ``results.md`` and ``results.png`` (metric per point) into ``<out>``. ``auto`` is wandb when a key is
configured, else local.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from echo_base import BadInputError, read_yaml_mapping
from evaluation.report import plot_bar_chart
from train.config import load_config
from train.tracking import wandb_mode

FINETUNE = Path(__file__).resolve().parents[1] / "finetune.py"


class SweepError(BadInputError):
    """A bad sweep file or argument; reported as one line naming the file and key."""


def load_sweep(path: Path) -> dict[str, Any]:
    """Read and check a sweep file; raises SweepError naming the file and the bad key."""
    spec = read_yaml_mapping(path, "sweep file", SweepError)
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
    """A short name from the varied keys only, e.g. 'r=8,template_set=echo_instruct,pooling=mean'."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={point[key]}" for key in varied)


def _base_config(spec: dict[str, Any]) -> str:
    return spec["command"][spec["command"].index("--config") + 1]


def run_overrides(spec: dict[str, Any], overrides: list[str], output_dir: Path) -> list[str]:
    """What follows a point's own keys on every run's command line, under either executor: the
    trailing overrides, then the run's output folder and the sweep's group."""
    return [*overrides, f"output_dir={output_dir}", f"wandb.group={spec['name']}"]


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no output)"])[-1]


def run_local(spec: dict[str, Any], overrides: list[str], out_root: Path, max_runs: int | None) -> list[dict[str, Any]]:
    """Run every point as a train/finetune.py process; returns one result per point."""
    points = sweep_points(spec)[:max_runs]
    varied = [key for key, choice in spec["parameters"].items() if "value" not in choice]
    metric = spec["metric"]["name"]
    results = []
    for index, point in enumerate(points):
        label = point_label(point, varied)
        run_dir = out_root / f"run-{index:03d}"
        command = [sys.executable, str(FINETUNE), "--config", _base_config(spec),
                   *(_override(key, value) for key, value in point.items()), *run_overrides(spec, overrides, run_dir),
                   f"wandb.name={spec['name']}-{index:03d} {label}".rstrip(), "train.resume=auto"]
        print(f"[{index + 1}/{len(points)}] {label}", flush=True)
        completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            raise SweepError(f"run {index} ({label}) failed: {_last_line(completed.stderr)}")
        logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        value = next((record[metric] for record in reversed(logged) if metric in record), None)
        if value is None:
            raise SweepError(f"run {index} ({label}) logged no {metric!r}; score the export with export.eval_tasks")
        tokens = [record["train/tokens"] for record in logged if "train/tokens" in record]
        results.append({"index": index, "label": label, "point": point, metric: value,
                        "tokens_per_step": sum(tokens) / len(tokens), "run_dir": str(run_dir)})
        print(f"    {metric} = {value:.4f}, {results[-1]['tokens_per_step']:.0f} prompt tokens/step", flush=True)
    return results


def write_sweep_report(spec: dict[str, Any], results: list[dict[str, Any]], out_root: Path) -> dict[str, Path]:
    """results.json, results.md (one row per point, best in bold, with its prompt tokens per step) and
    results.png (metric per point)."""
    metric, goal = spec["metric"]["name"], spec["metric"]["goal"]
    values = [result[metric] for result in results]
    best = max(values) if goal == "maximize" else min(values)
    varied = [key for key, choice in spec["parameters"].items() if "value" not in choice]
    lines = [f"# Sweep `{spec['name']}`: {metric} ({goal})", "",
             "| run | " + " | ".join(varied) + f" | {metric} | prompt tokens / step |",
             "|---|" + "---|" * len(varied) + "---:|---:|"]
    for result in results:
        cell = f"**{result[metric]:.4f}**" if result[metric] == best else f"{result[metric]:.4f}"
        lines.append(f"| {result['index']} | " + " | ".join(str(result["point"][key]) for key in varied)
                     + f" | {cell} | {result['tokens_per_step']:.0f} |")
    paths = {name: out_root / f"results.{name}" for name in ("json", "md", "png")}
    paths["json"].write_text(json.dumps({"sweep": spec, "results": results}, indent=2, default=str) + "\n")
    paths["md"].write_text("\n".join(lines) + "\n")
    # The metric's task names the chart's panel, e.g. eval/<task>/ndcg@10 -> "eval/<task>" and "ndcg@10".
    task, _, name = metric.rpartition("/")
    records = [{"label": result["label"], "task": task or metric, "metrics": {name: result[metric]}} for result in results]
    plot_bar_chart(records, paths["png"], f"sweep {spec['name']}: {metric} ({goal})", label_name="point (varied keys)")
    return paths


def wandb_sweep_config(spec: dict[str, Any], overrides: list[str], out_root: Path) -> dict[str, Any]:
    """The sweep configuration to register: the sweep file's, with :func:`run_overrides` after its command."""
    return {**spec, "command": [*spec["command"], *run_overrides(spec, overrides, out_root)]}


def wandb_sweep_command(config_file: Path, project: str) -> list[str]:
    """The command that registers the sweep configuration in ``config_file`` under ``project``."""
    return ["wandb", "sweep", "--project", project, str(config_file)]


def wandb_agent_command(sweep_output: str, max_runs: int | None) -> list[str]:
    """The agent's command, for the sweep path (entity/project/id) that ``wandb sweep`` printed
    in ``sweep_output``; raises SweepError when it printed none."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", sweep_output)  # wandb colours the path on a terminal
    found = re.search(r"wandb agent (\S+)", plain)
    if found is None:
        raise SweepError(f"wandb sweep printed no sweep to run: {_last_line(plain)}")
    return ["wandb", "agent", *(["--count", str(max_runs)] if max_runs else []), found.group(1)]


def run_wandb(spec: dict[str, Any], overrides: list[str], out_root: Path, max_runs: int | None) -> int:
    """Register the sweep with wandb (in the base config's wandb.project) and run an agent on it in
    this shell; returns the agent's exit status."""
    project = load_config(_base_config(spec), overrides).wandb.project
    config_file = out_root / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(wandb_sweep_config(spec, overrides, out_root), sort_keys=False))
    created = subprocess.run(wandb_sweep_command(config_file, project), capture_output=True, text=True)
    if created.returncode != 0:
        raise SweepError(f"wandb sweep failed: {_last_line(created.stderr + created.stdout)}")
    return subprocess.run(wandb_agent_command(created.stdout + created.stderr, max_runs)).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.launchers.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep file in wandb's format (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value applied to every run")
    parser.add_argument("--executor", choices=["auto", "local", "wandb"], default="auto")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="run at most N points (local: the first N; wandb: the agent's --count)")
    parser.add_argument("--out", type=Path, default=None, help="output folder, the runs' under it (default runs/sweeps/<name>)")
    args = parser.parse_intermixed_args(argv)
    try:
        bad = [item for item in args.overrides if "=" not in item]
        if bad:
            raise SweepError(f"expected section.key=value, got {' '.join(bad)}")
        spec = load_sweep(args.sweep)
        executor = args.executor if args.executor != "auto" else ("wandb" if wandb_mode("auto") == "online" else "local")
        out_root = args.out or Path("runs") / "sweeps" / spec["name"]
        out_root.mkdir(parents=True, exist_ok=True)
        if executor == "wandb":
            return run_wandb(spec, args.overrides, out_root, args.max_runs)
        results = run_local(spec, args.overrides, out_root, args.max_runs)
        paths = write_sweep_report(spec, results, out_root)
    except BadInputError as error:  # SweepError, or the base config's ConfigError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"report: {paths['md']} {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
