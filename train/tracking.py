"""Run logging: wandb (offline without a key), a JSONL log file, and a progress bar.

The JSONL log (``<output_dir>/log.jsonl``) is what tests and scripts read back; wandb
gets the same records. Only the main process logs. Every ``log_every`` steps a step's
record also carries the throughput of the steps since the last such record (their own
time: evaluations and checkpoints in between are not counted) and the peak memory.
At the end the log is drawn into ``<output_dir>/training.png``, and with
``wandb.log_model`` the export is logged as a wandb model artifact (a reference).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from evaluation.report import plot_training

# The progress bars of this process's runs, so that a run ending in an error can finish its bar first.
_progress_bars: weakref.WeakSet = weakref.WeakSet()

if TYPE_CHECKING:
    import wandb

LOG_FILE = "log.jsonl"  # in the run's folder


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated GPU memory on CUDA, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def wandb_mode(requested: str) -> str:
    """'auto' resolves to online when a key is configured, else offline (a machine without network still works)."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def run_dir(output_dir: Path) -> Path:
    """Where a run writes: ``output_dir``, or its subfolder named by the run id when a wandb sweep agent started it.

    An agent starts every run of a sweep with the same command, so with the same output_dir:
    in one folder the runs would resume from and overwrite each other. The agent puts the
    sweep's and the run's ids in the environment, and ``wandb.init`` takes the run id from there.
    """
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return Path(output_dir) / os.environ["WANDB_RUN_ID"]
    return Path(output_dir)


def model_artifact(export_dir: Path, name: str) -> wandb.Artifact:
    """A wandb artifact of type "model" that references ``export_dir`` (file:// URI): wandb records
    each file's path, size and checksum, and copies nothing."""
    import wandb

    artifact = wandb.Artifact(name, type="model", description=f"{export_dir} (by reference: the files stay there)")
    artifact.add_reference(Path(export_dir).resolve().as_uri())
    return artifact


class RunLogger:
    """Writes metrics to log.jsonl and wandb, and drives the progress bar (main process only).

    Every process must create it and call :meth:`log_step` (the throughput window is kept
    everywhere, so ``device`` peak memory is each process's own); only the main one writes.
    """

    def __init__(self, enabled: bool, output_dir: Path, wandb_settings: dict, config: dict, total_steps: int,
                 start_step: int, log_every: int, device: torch.device):
        self.enabled, self.log_every, self.total_steps, self.device = enabled, log_every, total_steps, device
        self.output_dir, self.log_model = Path(output_dir), wandb_settings["log_model"]
        self.run = self.bar = None
        self._window_seconds, self._window_tokens, self._window_queries = 0.0, 0, 0
        if not enabled:
            return
        self.log_file = (self.output_dir / LOG_FILE).open("a")
        mode = wandb_mode(wandb_settings["mode"])
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project=wandb_settings["project"], name=wandb_settings["name"] or Path(output_dir).name,
                                  group=wandb_settings["group"], tags=wandb_settings["tags"], config=config,
                                  dir=str(output_dir), mode=mode, reinit="finish_previous")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        _progress_bars.add(self.bar)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        self.log_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.log_file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_step(self, step: int, result, extra: dict[str, float]) -> None:
        """Log a :class:`train.step.StepResult` (plus ``extra`` metrics, e.g. dev scores) and advance the bar."""
        # train/tokens: the step's prompt tokens, the cost a sweep compares template sets by.
        metrics = {"train/loss": result.loss, "train/lr": result.lr, "train/tokens": result.num_tokens}
        if result.grad_norm is not None:
            metrics["train/grad_norm"] = result.grad_norm
        self._window_seconds += result.seconds
        self._window_tokens += result.num_tokens
        self._window_queries += result.num_queries
        if step % self.log_every == 0 or step == self.total_steps:
            metrics.update({"train/tokens_per_s": self._window_tokens / self._window_seconds,
                            "train/examples_per_s": self._window_queries / self._window_seconds,
                            "train/peak_memory_gb": peak_memory_gb(self.device)})
            self._window_seconds, self._window_tokens, self._window_queries = 0.0, 0, 0
        self.log(step, {**metrics, **extra})
        if self.bar is not None:
            postfix = {"loss": result.loss, **{key.split("/")[1]: value for key, value in metrics.items() if key.endswith("_per_s")}}
            # The postfix first: update() redraws, so the bar shows this step's numbers beside its count.
            self.bar.set_postfix({key: f"{value:.4g}" for key, value in postfix.items()}, refresh=False)
            self.bar.update(1)

    def warn(self, message: str) -> None:
        """Print ``warning: <message>`` as a line of its own above the progress bar (main process only)."""
        if self.enabled:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    def close(self, export_dir: Path) -> None:
        """End the run: draw the whole log (earlier sessions of a resumed run too) into training.png,
        log ``export_dir`` (the run's model) as an artifact when ``wandb.log_model`` is set, finish wandb."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.log_file.close()
        records = [json.loads(line) for line in (self.output_dir / LOG_FILE).read_text().splitlines()]
        plot_training(records, self.output_dir / "training.png", title=f"training: {self.output_dir.name}")
        if self.run is not None:
            if self.log_model:
                # Named by the run id: a run name may hold characters an artifact name may not.
                self.run.log_artifact(model_artifact(export_dir, f"model-{self.run.id}"))
            self.run.finish()


def close_progress_bars() -> None:
    """Finish every progress bar still drawn, so that the error line of a stopped run starts a line of its own."""
    for bar in list(_progress_bars):
        bar.close()
