"""Checkpoints that resume exactly and never half-exist.

``<output_dir>/checkpoints/step-<N>/`` holds:

* ``accelerate/`` — optimizer, scheduler and per-process RNG states through
  ``accelerator.save_state`` (under DeepSpeed the engine's own, partitioned checkpoint),
  with the frozen base weights left out: only trainable weights are saved;
* ``adapter.safetensors`` — the trainable weights, gathered (complete under ZeRO-3),
  the source for resuming them and for :mod:`models.export`;
* ``export_spec.json``, ``config.yaml`` and ``state.json`` (step, sampler position).

A checkpoint is written into ``step-<N>.partial`` and renamed when every process has
finished writing, so a crash mid-save leaves only a ``.partial`` folder, which resume
ignores (and the next save of that step replaces).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn

from models.lora import load_trainable_state, trainable_state_dict
from models.export import ADAPTER_FILE, EXPORT_SPEC_FILE

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = [path for path in root.glob("step-*") if path.is_dir() and _STEP_DIR.match(path.name)]
    return sorted(found, key=lambda path: int(_STEP_DIR.match(path.name).group(1)))


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: 'auto' = latest complete one (or none), 'none', or a path.

    Raises ValueError when a given path is not a complete checkpoint.
    """
    if resume == "none":
        return None
    if resume == "auto":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"train.resume={resume!r}: not a complete checkpoint folder (no state.json)")
    return path


def _trim_to_trainable(model: nn.Module):
    """accelerate save hook: keep only trainable weights in the model state it writes."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}

    def hook(models, weights, output_dir):
        for index, state in enumerate(weights):
            weights[index] = {key: value for key, value in state.items() if key in trainable}

    return hook


def save_checkpoint(accelerator: Accelerator, model: nn.Module, output_dir: Path, step: int, *,
                    export_spec: dict, config_yaml: str, sampler_state: dict) -> Path:
    """Write ``checkpoints/step-<step>`` atomically; every process must call it."""
    final = Path(output_dir) / CHECKPOINTS / f"step-{step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()

    adapter = trainable_state_dict(accelerator.unwrap_model(model))  # collective under ZeRO-3
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(partial / "accelerate"), exclude_frozen_parameters=True)
    else:
        handle = accelerator.register_save_state_pre_hook(_trim_to_trainable(model))
        accelerator.save_state(str(partial / "accelerate"))
        handle.remove()
    if accelerator.is_main_process:
        save_file(adapter, partial / ADAPTER_FILE)
        (partial / EXPORT_SPEC_FILE).write_text(json.dumps(export_spec, indent=2))
        (partial / "config.yaml").write_text(config_yaml)
        (partial / "state.json").write_text(json.dumps({"step": step, "sampler": sampler_state}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, model: nn.Module, checkpoint: Path) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``checkpoint``; returns its state.json."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(checkpoint / "accelerate"), load_module_strict=False)
    else:
        # The saved model state holds only trainable weights, hence strict=False here and
        # the exact key check on adapter.safetensors right after.
        accelerator.load_state(str(checkpoint / "accelerate"), strict=False)
        load_trainable_state(accelerator.unwrap_model(model), load_file(checkpoint / ADAPTER_FILE), source=str(checkpoint))
    return json.loads((checkpoint / "state.json").read_text())
