"""Checkpoints that resume exactly and never half-exist.

``<output_dir>/checkpoints/step-<N>/`` holds:

* ``accelerate/`` — optimizer, scheduler and per-process RNG states through
  ``accelerator.save_state`` (under DeepSpeed the engine's own, partitioned checkpoint),
  with the frozen base weights left out: only trainable weights are saved;
* ``adapter.safetensors`` — the trainable weights, gathered (complete under ZeRO-3),
  the source for resuming them and for :mod:`models.export`;
* ``export_spec.json``, ``config.yaml`` and ``state.json`` (step, sampler position).

A checkpoint is written into a hidden staging folder (:mod:`echo_base.atomic`) and
published, fsynced, when every process has finished writing, so a crash mid-save leaves
only the staging folder, which resume ignores (and the next save of that step replaces).
No checkpoint holds a non-finite weight: every save checks first. A save the storage
refuses (a full disk, a read-only folder) ends in one StorageError naming the path, and
the checkpoints before it stay as they were. With ``keep`` set, the oldest checkpoints
beyond the newest ``keep`` are deleted, only ever after a newer one is published.

Resuming loads pickles (the optimizer, scheduler and RNG states that accelerate and
DeepSpeed write) only after a static scan of each (no code runs) finds nothing but
tensors, plain data and the few classes those libraries store: accelerate loads with
``weights_only=True`` itself, DeepSpeed does not (``weights_only=False`` in its
``TorchCheckpointEngine``, upstream), so the scan is what keeps a doctored checkpoint
from running code.

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
import zipfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn

from data.sampler import SingleDatasetBatchSampler
from echo_base import (BadInputError, publish_folder, recover_folder, remove_folder, staging_folder, staging_path,
                       storage_errors)
from models.export import ADAPTER_FILE, EXPORT_SPEC_FILE
from models.lora import check_finite_weights, load_trainable_state, trainable_state_dict
from train.tracking import LOG_FILE

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_RETIRED_STEP_DIR = re.compile(r"^\.(step-\d+)\.old$")
# Files that accelerate and DeepSpeed write with torch.save (pickles).
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt"})
# What those pickles may reference besides tensors and plain data (torch's own weights_only
# allowlist): numpy's RNG state (accelerate's random_states_<rank>.pkl, as accelerate's own
# ``load`` allows) and three plain DeepSpeed classes in its ZeRO optimizer states.
ALLOWED_PICKLE_GLOBALS = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.dtypes.UInt32DType", "_codecs.encode",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
})


class UnsafeCheckpointError(BadInputError):
    """A checkpoint file that could run code when loaded; the message names the file."""


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (one a crash left renamed aside is put back first)."""
    root = Path(output_dir) / CHECKPOINTS
    for retired in root.glob(".step-*.old"):
        if match := _RETIRED_STEP_DIR.match(retired.name):
            recover_folder(root / match.group(1))
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

    The checkpoints folder is hidden first (:func:`~echo_base.atomic.remove_folder`), so a crash
    midway leaves no half-deleted checkpoint under a name that ``resume=auto`` would take. Call it holding the folder's lock.
    """
    checkpoints = Path(output_dir) / CHECKPOINTS
    if checkpoints.exists():
        remove_folder(checkpoints)
    (Path(output_dir) / LOG_FILE).unlink(missing_ok=True)
def refuse_unsafe_pickles(folder: Path) -> None:
    """Raise UnsafeCheckpointError naming the first pickle under ``folder`` that references more than
    tensors, plain data and :data:`ALLOWED_PICKLE_GLOBALS`.

    The scan reads each pickle's opcodes without running them
    (``torch.serialization.get_unsafe_globals_in_checkpoint``); a pickle in torch's old
    non-zip format cannot be scanned and is refused too.
    """
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix not in PICKLE_SUFFIXES or not path.is_file():
            continue
        if not zipfile.is_zipfile(path):
            raise UnsafeCheckpointError(f"{path}: refused: not a zip-format torch file, so it cannot be checked "
                                        "before loading (a pickle can run code)")
        unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - ALLOWED_PICKLE_GLOBALS)
        if unsafe:
            raise UnsafeCheckpointError(f"{path}: refused: loading it would call {', '.join(unsafe)} "
                                        "(a pickle that can run code); only tensors and plain data are loaded")


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
                 config_yaml: str, sampler: SingleDatasetBatchSampler, keep: int | None = None) -> None:
        self.accelerator = accelerator
        self.model = model
        self.output_dir = Path(output_dir)
        self.export_spec = export_spec
        self.config_yaml = config_yaml
        self.sampler = sampler
        self.keep = keep  # checkpoints kept (the newest); None keeps all

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step-<step>`` atomically and durably, drop the oldest beyond ``keep``; return it.

        Raises NonFiniteError naming the weight, before anything is written, when a trainable
        weight is not finite; StorageError naming the path when the storage refuses a write
        (the staging folder is removed, earlier checkpoints stay as they were).
        """
        accelerator = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step-{step}"
        adapter = trainable_state_dict(accelerator.unwrap_model(self.model))  # collective under ZeRO-3
        # Every process holds the same complete weights here, so all of them raise together.
        check_finite_weights(adapter, f"checkpoint step-{step}")
        try:
            with storage_errors(final):
                self._write(step, adapter, final)
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(staging_path(final), ignore_errors=True)  # a full disk gets its space back
            raise
        return final

    def _write(self, step: int, adapter: dict[str, torch.Tensor], final: Path) -> None:
        accelerator = self.accelerator
        staging = staging_path(final)
        if accelerator.is_main_process:
            staging_folder(final)
        accelerator.wait_for_everyone()
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
            # fsyncs every file, the other processes' too: an fsync flushes a file whoever wrote it
            # (on one machine; shared filesystems such as NFS flush a file when its writer closes it).
            publish_folder(staging, final)
            self._drop_oldest(final)
        accelerator.wait_for_everyone()

    def _drop_oldest(self, newest: Path) -> None:
        """Delete the oldest checkpoints beyond ``keep``, never ``newest``, which was just published:
        the checkpoint a run resumed from goes only once a newer one is complete."""
        if self.keep is None:
            return
        older = [path for path in checkpoint_dirs(self.output_dir) if path != newest]
        for path in older[: max(0, len(older) - (self.keep - 1))]:
            remove_folder(path)

    def resume(self, resume: str) -> int:
        """Restore weights, optimizer, scheduler, RNG and sampler position per ``train.resume``;
        returns the step to continue after (0 when starting fresh)."""
        checkpoint = resolve_resume(resume, self.output_dir)
        if checkpoint is None:
            return 0
        accelerator = self.accelerator
        refuse_unsafe_pickles(checkpoint / "accelerate")
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
