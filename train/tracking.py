"""Run logging: wandb (offline without a key), a JSONL log file, and a progress bar.

The JSONL log (``<output_dir>/log.jsonl``) is what tests and scripts read back; wandb
gets the same records. Only the main process logs. Every ``log_every`` steps a step's
record also carries the throughput of the steps since the last such record (their own
time: evaluations and checkpoints in between are not counted) and the peak memory.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch
from tqdm.auto import tqdm


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


class RunLogger:
    """Writes metrics to log.jsonl and wandb, and drives the progress bar (main process only).

    Every process must create it and call :meth:`log_step` (the throughput window is kept
    everywhere, so ``device`` peak memory is each process's own); only the main one writes.
    """

    def __init__(self, enabled: bool, output_dir: Path, wandb_settings: dict, config: dict, total_steps: int,
                 start_step: int, log_every: int, device: torch.device):
        self.enabled, self.log_every, self.total_steps, self.device = enabled, log_every, total_steps, device
        self.run = self.bar = None
        self._window_seconds, self._window_tokens, self._window_queries = 0.0, 0, 0
        if not enabled:
            return
        self.log_file = (Path(output_dir) / "log.jsonl").open("a")
        mode = wandb_mode(wandb_settings["mode"])
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project=wandb_settings["project"], name=wandb_settings["name"] or Path(output_dir).name,
                                  group=wandb_settings["group"], tags=wandb_settings["tags"], config=config,
                                  dir=str(output_dir), mode=mode, reinit="finish_previous")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        self.log_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.log_file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_step(self, step: int, result, extra: dict[str, float]) -> None:
        """Log a :class:`train.step.StepResult` (plus ``extra`` metrics, e.g. dev scores) and advance the bar."""
        metrics = {"train/loss": result.loss, "train/lr": result.lr}
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
            self.bar.update(1)
            self.bar.set_postfix({key: f"{value:.4g}" for key, value in postfix.items()}, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.log_file.close()
        if self.run is not None:
            self.run.finish()
