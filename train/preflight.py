"""A run's command line, and every input of the run read and checked before anything is written.

A run's inputs are its arguments (``--config`` and ``key=value`` overrides), the config
they make, the model, the training data, the dev and export evaluation tasks, and its
output folder: another live run may hold it, and the checkpoints in it decide what
``train.resume`` may do. :func:`read_run_inputs` is the first thing train/finetune.py does,
so bad input stops a run in one line before anything is written to ``output_dir`` (the
cache is written on first use: a registered model is converted, a training mix prepared).

``python -m train.preflight --config C [key=value ...]`` runs the same checks alone and
writes nothing; the process count comes from ``WORLD_SIZE`` (default 1). launch.sh runs it
before it starts any process: accelerate's launcher reports a process's exit code 2 as its
own traceback and exit code 1, so bad input found inside the launched run would not end in
one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from echo_base import UsageError, command_status
from evaluation.tasks import check_task, resolve_tasks
from models.lora import check_lora
from models.registry import model_skeleton
from train.checkpoint import resolve_resume
from train.config import RunConfig, config_key, load_config
from train.run_folder import check_run_folder
from train.tracking import run_dir
from train.training_data import TrainingData, load_training_data


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad argument raises UsageError (one line, exit code 2) instead of printing the usage."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (usage: {self.prog} --config CONFIG [section.key=value ...])")


def parse_args(argv: list[str], prog: str = "train/finetune.py") -> RunConfig:
    """The run config that ``--config`` and the ``section.key=value`` overrides make; raises UsageError or ConfigError."""
    parser = _ArgumentParser(prog=prog, description="Contrastive LoRA fine-tuning of a causal LM into an echo embedding model.")
    parser.add_argument("--config", required=True, help="YAML run config (train/config.py documents every key)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=3")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is empty: name a YAML file")
    bad = [item for item in args.overrides if "=" not in item or item.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (only --config and section.key=value are accepted)")
    return load_config(args.config, args.overrides)


@dataclass(frozen=True)
class RunInputs:
    """What a run reads before it starts: its training data and the export's evaluation tasks (name -> folder)."""

    data: TrainingData
    export_tasks: dict[str, Path]


def read_run_inputs(config: RunConfig, num_processes: int, *, main_process: bool = True) -> RunInputs:
    """Read and check every input of a run; nothing is written to ``output_dir``.

    Raises BadInputError naming the key, or the file and line: a batch the processes cannot
    share, a model that does not load or lacks the layers or modules ``lora`` names, a
    malformed training file or task folder (``data.dev``, ``export.eval_tasks``), a
    ``train.resume`` that names no checkpoint or would mix two runs, and (on the main process,
    the one that will lock it) an ``output_dir`` that is a file or that another live run holds.
    """
    if config.train.batch_size % num_processes:
        raise UsageError(f"train.batch_size={config.train.batch_size} must divide by the number of processes "
                         f"({num_processes})")
    output_dir = run_dir(config.output_dir)
    if main_process:
        check_run_folder(output_dir)
    resolve_resume(config.train.resume, output_dir)
    with config_key("model.name"):
        skeleton = model_skeleton(config.model.name, config.model.trust_remote_code)
    check_lora(config.lora, skeleton)
    data = load_training_data(config.data)
    if data.dev is not None:
        with config_key("data.dev"):
            check_task(data.dev)
    with config_key("export.eval_tasks"):
        export_tasks = resolve_tasks(config.export.eval_tasks) if config.export.eval_tasks else {}
        for folder in export_tasks.values():
            check_task(folder)
    return RunInputs(data, export_tasks)


def main(argv: list[str] | None = None) -> int:
    """Command line: check a run's inputs as train/finetune.py would; exit status 0, or 2 on bad input."""

    def check() -> None:
        config = parse_args(sys.argv[1:] if argv is None else argv, prog="python -m train.preflight")
        inputs = read_run_inputs(config, int(os.environ.get("WORLD_SIZE", "1")))
        print(f"preflight: inputs of {run_dir(config.output_dir)} checked ({len(inputs.data.examples)} training examples)")

    return command_status(check)


if __name__ == "__main__":
    sys.exit(main())
