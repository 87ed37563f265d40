"""Living with DeepSpeed ZeRO-3: building a whole (unpartitioned) model inside a ZeRO-3 run,
releasing prefetched parameters after forwards without a backward, and telling whether a
model is partitioned.

Accelerate registers its DeepSpeed config with transformers as soon as the Accelerator
exists, whatever ``zero3_init_flag`` says, and under ZeRO-3 ``from_pretrained`` then
partitions every weight at load with collective broadcasts (and peft's trainable-token
set-up takes a CUDA-only path). :func:`outside_zero3` lifts that registration for a
block: for the export, which the main process runs alone (a partitioned load would wait
forever for the others), and for runs whose config turns ``zero3_init_flag`` off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def outside_zero3() -> Iterator[None]:
    """Models built in this block are whole; the registration returns afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    # A module-level weak reference; transformers has unset but no public way to restore it.
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def release_prefetched_parameters(model) -> None:
    """Release the parameters ZeRO-3 prefetched for a backward that never came.

    Forwards without a backward (evaluation) leave them held; the next gather (a
    checkpoint, the export) would then find them in flight. A no-op for anything but a
    DeepSpeed engine, and below ZeRO-3.
    """
    if hasattr(model, "empty_partition_cache"):
        model.empty_partition_cache()


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitions ``model``'s parameters (they carry DeepSpeed's ``ds_id``)."""
    return any(hasattr(param, "ds_id") for param in model.parameters())
