"""The run's `Accelerator`: the right process group on every launcher, a checked view of it,
and DeepSpeed's "auto" values filled from the run config.

Accelerate builds its view of the processes (``num_processes``, ``process_index``) from
the backend it picks, and on a machine without a GPU it picks none in two cases:

* DeepSpeed (``ACCELERATE_USE_DEEPSPEED=true``) without ``cpu=True``: DeepSpeed still
  joins every rank into one gloo group, but accelerate's backend stays ``None``, so it
  reports one process at index 0 on every rank. ``is_main_process``, ``save_state``
  (``random_states_<index>.pkl``), ``reduce`` and ``wait_for_everyone`` then act as if
  alone. And ``cpu=True`` is no way out: it turns DeepSpeed off. Naming the backend
  (DeepSpeed's own communication backend for its CPU accelerator) gives the right view.
* plain DDP without ``ACCELERATE_USE_CPU=1``: no process group at all; every process
  would train alone on the whole data. ``launch.sh --cpu`` sets the variable.

:func:`make_accelerator` handles the first and :func:`check_process_view` turns any
remaining disagreement between accelerate, torch.distributed and the launcher's
``WORLD_SIZE`` into one clear error.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from echo_base import BadInputError
from models.zero3 import outside_zero3
from train.config import TrainConfig


class ProcessViewError(BadInputError):
    """Accelerate, torch.distributed and the launcher disagree on the processes of the run."""


def _deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator() -> Accelerator:
    """An `Accelerator` whose process count and index are right under DeepSpeed on CPU too.

    Raises ProcessViewError (see :func:`check_process_view`) if the view is still wrong.
    """
    handlers = []
    if _deepspeed_requested() and "LOCAL_RANK" in os.environ and not torch.cuda.is_available():
        from deepspeed.accelerator import get_accelerator

        # Without a named backend accelerate keeps backend=None on CPU and reports one process.
        handlers.append(InitProcessGroupKwargs(backend=get_accelerator().communication_backend_name()))
    # The scheduler counts optimizer steps: accelerate would otherwise step it once per process.
    accelerator = Accelerator(kwargs_handlers=handlers, step_scheduler_with_optimizer=False)
    check_process_view(accelerator)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process())
    return accelerator


def cpu_threads_per_process() -> int:
    """Threads for each process on CPU: the physical cores shared among this machine's processes.

    `accelerate launch` without a config sets OMP_NUM_THREADS=1, which halves a 2-core
    machine's training rate; ``ECHO_CPU_THREADS`` overrides the split.
    """
    if os.environ.get("ECHO_CPU_THREADS"):
        return int(os.environ["ECHO_CPU_THREADS"])
    import psutil

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // local_processes)


def check_process_view(accelerator: Accelerator) -> None:
    """Raise ProcessViewError naming the disagreement unless accelerate sees every launched process."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    group = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if _deepspeed_requested() and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise ProcessViewError(
            "ACCELERATE_USE_DEEPSPEED=true but accelerate runs without DeepSpeed: ACCELERATE_USE_CPU=1 "
            "(accelerate launch --cpu) turns it off; on CPU use DS_ACCELERATOR=cpu instead (launch.sh --cpu --zero N)")
    if (accelerator.num_processes, accelerator.process_index) != (group, rank) or group != launched:
        hint = ("set ACCELERATE_USE_CPU=1 for DDP on CPU (launch.sh --cpu does)"
                if group == 1 and launched > 1 else "launch through launch.sh or accelerate launch")
        raise ProcessViewError(
            f"process view mismatch: launcher WORLD_SIZE={launched}, torch.distributed world={group} rank={rank}, "
            f"accelerate num_processes={accelerator.num_processes} process_index={accelerator.process_index}; {hint}")


def fill_deepspeed_config(accelerator: Accelerator, train: TrainConfig) -> None:
    """Fill the DeepSpeed config's "auto" batch, accumulation, clipping and precision values from ``train``.

    Call before ``accelerator.prepare``. Accelerate would fill ``gradient_clipping`` with 1.0
    whatever train.max_grad_norm says, and it can only derive the batch sizes from a
    prepared DataLoader, which this loop does not use. A value the file sets explicitly
    must agree with the run config; raises BadInputError naming both keys otherwise.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "the DeepSpeed config")
    # The engine never sees the micro-batches (GradCache drives its backward), so these only
    # have to be consistent: DeepSpeed checks train_batch_size = micro x accumulation x world.
    ours = {
        "train_micro_batch_size_per_gpu": (train.batch_size // accelerator.num_processes, "train.batch_size / processes"),
        "gradient_accumulation_steps": (train.gradient_accumulation_steps, "train.gradient_accumulation_steps"),
        "train_batch_size": (train.batch_size * train.gradient_accumulation_steps,
                             "train.batch_size x train.gradient_accumulation_steps"),
        # The engine clips (once, after the last backward of the step); 0 means off in DeepSpeed.
        "gradient_clipping": (train.max_grad_norm or 0.0, "train.max_grad_norm"),
        # Master weights stay float32; EchoEncoder.embed runs bf16 autocast itself (model.precision).
        "bf16.enabled": (False, "model.precision (autocast, not DeepSpeed's bf16)"),
        "fp16.enabled": (False, "model.precision (autocast, not DeepSpeed's fp16)"),
    }
    for dotted, (value, owner) in ours.items():
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        current = node.get(key, "auto")
        if current == "auto":
            node[key] = value
        elif current != value:
            raise BadInputError(f"{source}: {dotted}={current!r} disagrees with {owner}={value!r}; set it to \"auto\"")


def model_build_context(accelerator: Accelerator) -> AbstractContextManager:
    """Where to load the base model and add LoRA: partitioned at load only if zero3_init_flag asks.

    Accelerate's flag alone does not stop transformers from partitioning (models.zero3).
    A whole model per process costs host memory (4 bytes a parameter) but nothing on the GPU.
    """
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type == DistributedType.DEEPSPEED else None
    return outside_zero3() if plugin is not None and not plugin.zero3_init_flag else nullcontext()
