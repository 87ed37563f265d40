"""Run logging: wandb (offline without a key), a JSONL log file, and a progress bar.

The JSONL log (``<output_dir>/log.jsonl``) is what tests and scripts read back; wandb
gets the same records. Only the main process logs.
"""

from __future__ import annotations

import json
import os
import resource
import time
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
    """Writes metrics to log.jsonl and wandb, and drives the progress bar (main process only)."""

    def __init__(self, enabled: bool, output_dir: Path, wandb_settings: dict, config: dict, total_steps: int, start_step: int):
        self.enabled = enabled
        self.run = None
        self.bar = None
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
        self._last_time = time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.log_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.log_file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def advance(self, steps: int, postfix: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix({key: f"{value:.4g}" for key, value in postfix.items()}, refresh=False)

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.log_file.close()
        if self.run is not None:
            self.run.finish()
