"""Checkpoints that resume exactly and never half-exist.

``<output_dir>/checkpoints/step-<N>/`` holds:

* ``accelerate/`` — optimizer, scheduler and per-process RNG states through
  ``accelerator.save_state`` (under DeepSpeed the engine's own, partitioned checkpoint),
  with the frozen base weights left out: only trainable weights are saved;
* ``adapter.safetensors`` — the trainable weights, gathered (complete under ZeRO-3),
  the source for resuming them and for :mod:`models.export`;
* ``export_spec.json``, ``config.yaml`` and ``state.json`` (step, sampler position).

A checkpoint is written into a hidden staging folder (:mod:`echo_base.atomic`) and
published when every process has finished writing, so a crash mid-save leaves only the
staging folder, which resume ignores (and the next save of that step replaces).

:class:`Checkpointer` binds what every save of a run shares (the accelerator, the model,
the folder, what the export needs, the sampler whose position it records).

:func:`resolve_resume` says what ``train.resume`` resumes from. A fresh start into a folder
that holds checkpoints is refused: its checkpoints would mix with the earlier run's, and a
later ``resume=auto`` would take whichever step is highest. ``resume=overwrite`` asks for
the earlier run to be deleted first (:func:`discard_earlier_run`).
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

from data.sampler import SingleDatasetBatchSampler
from echo_base import BadInputError, publish_folder, staging_folder, staging_path
from models.export import ADAPTER_FILE, EXPORT_SPEC_FILE
from models.lora import load_trainable_state, trainable_state_dict
from train.tracking import LOG_FILE

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = [path for path in root.glob("step-*") if path.is_dir() and _STEP_DIR.match(path.name)]
    return sorted(found, key=lambda path: int(_STEP_DIR.match(path.name).group(1)))


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: 'auto' = latest complete one (or none), 'none' and
    'overwrite' = none (see train/config.py), or a path.

    Raises BadInputError when a given path is not a complete checkpoint, and for 'none' when
    ``output_dir`` already holds checkpoints: a fresh run's would mix with them.
    """
    found = checkpoint_dirs(output_dir) if resume == "none" else []
    if found:
        raise BadInputError(f"train.resume=none: {output_dir} already holds {len(found)} checkpoint(s) of an earlier run "
                            f"({found[0].name} to {found[-1].name}); continue them "
                            "with train.resume=auto, delete them and start over with train.resume=overwrite, "
                            "or choose another output_dir")
    if resume in ("none", "overwrite"):
        return None
    if resume == "auto":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise BadInputError(f"train.resume={resume!r}: not a complete checkpoint folder (no state.json)")
    return path


def discard_earlier_run(output_dir: Path) -> None:
    """Delete the checkpoints and the log an earlier run left in ``output_dir`` (``train.resume=overwrite``).

    The checkpoints folder is renamed aside first, so a crash midway leaves no half-deleted
    checkpoint under a name that ``resume=auto`` would take. Call it holding the folder's lock.
    """
    checkpoints = Path(output_dir) / CHECKPOINTS
    if checkpoints.exists():
        retired = staging_path(checkpoints)
        shutil.rmtree(retired, ignore_errors=True)
        checkpoints.rename(retired)
        shutil.rmtree(retired)
    (Path(output_dir) / LOG_FILE).unlink(missing_ok=True)


def _trim_to_trainable(model: nn.Module):
    """accelerate save hook: keep only trainable weights in the model state it writes."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}

    def hook(models, weights, output_dir):
        for index, state in enumerate(weights):
            weights[index] = {key: value for key, value in state.items() if key in trainable}

    return hook


class Checkpointer:
    """Saves and restores the checkpoints of one run; every process must make the same calls."""

    def __init__(self, accelerator: Accelerator, model: nn.Module, output_dir: Path, *, export_spec: dict,
                 config_yaml: str, sampler: SingleDatasetBatchSampler) -> None:
        self.accelerator = accelerator
        self.model = model
        self.output_dir = Path(output_dir)
        self.export_spec = export_spec
        self.config_yaml = config_yaml
        self.sampler = sampler

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step-<step>`` atomically and return it."""
        accelerator = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step-{step}"
        staging = staging_path(final)
        if accelerator.is_main_process:
            staging_folder(final)
        accelerator.wait_for_everyone()

        adapter = trainable_state_dict(accelerator.unwrap_model(self.model))  # collective under ZeRO-3
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            accelerator.save_state(str(staging / "accelerate"), exclude_frozen_parameters=True)
        else:
            handle = accelerator.register_save_state_pre_hook(_trim_to_trainable(self.model))
            accelerator.save_state(str(staging / "accelerate"))
            handle.remove()
        if accelerator.is_main_process:
            save_file(adapter, staging / ADAPTER_FILE)
            (staging / EXPORT_SPEC_FILE).write_text(json.dumps(self.export_spec, indent=2))
            (staging / "config.yaml").write_text(self.config_yaml)
            state = {"step": step, "sampler": self.sampler.state_dict()}
            (staging / "state.json").write_text(json.dumps(state, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            publish_folder(staging, final)
        accelerator.wait_for_everyone()
        return final

    def resume(self, resume: str) -> int:
        """Restore weights, optimizer, scheduler, RNG and sampler position per ``train.resume``;
        returns the step to continue after (0 when starting fresh)."""
        checkpoint = resolve_resume(resume, self.output_dir)
        if checkpoint is None:
            return 0
        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            accelerator.load_state(str(checkpoint / "accelerate"), load_module_strict=False)
        else:
            # The saved model state holds only trainable weights, hence strict=False here and
            # the exact key check on adapter.safetensors right after.
            accelerator.load_state(str(checkpoint / "accelerate"), strict=False)
            load_trainable_state(accelerator.unwrap_model(self.model), load_file(checkpoint / ADAPTER_FILE),
                                 source=str(checkpoint))
        state = json.loads((checkpoint / "state.json").read_text())
        self.sampler.load_state_dict(state["sampler"])
        if accelerator.is_main_process:
            print(f"resumed from {checkpoint} at step {state['step']}")
        return state["step"]
