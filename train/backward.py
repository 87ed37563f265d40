"""How gradients reach the weights under each training wrapper: one strategy per wrapper.

A step backpropagates several times before it updates (one backward per GradCache chunk,
per micro-batch of gradient accumulation), and the wrapper must reduce gradients across
ranks exactly once, on the last backward before the update. Each wrapper is told so
differently, and each updates differently, so a :class:`Backward` strategy owns both:

* :class:`PlainBackward` — no wrapper, one process: gradients simply accumulate;
* :class:`AcceleratorBackward` — accelerate without DeepSpeed (one process, DDP): skip
  the all-reduce with ``accelerator.no_sync`` until the last backward;
* :class:`DeepSpeedBackward` — a DeepSpeed engine, driven directly.

:func:`make_backward` picks one from the accelerator, once. The caller owns every
scaling of the loss (accumulation), so no strategy rescales. No strategy ever applies a
non-finite loss or gradient: such a step leaves the weights, the optimizer state and the
lr schedule as they were (:class:`Update` says whether it was applied).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate.utils import DistributedType
from torch import Tensor


@dataclass(frozen=True)
class Update:
    """What an optimizer update did."""

    applied: bool  # False: the loss or a gradient was not finite, and nothing changed
    grad_norm: float | None  # before clipping; None when clipping is off


class Backward(Protocol):
    """Backward passes and the optimizer update under one training wrapper.

    ``sync`` is True only for the backward that must reduce gradients across ranks: the
    last chunk of the last micro-batch before the update. The caller owns that decision.
    """

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        """Wraps a forward *and* its backward (DDP decides at forward time whether to sync)."""
        ...

    def backward(self, loss: Tensor, sync: bool) -> None:
        """Backprop ``loss`` into the parameter gradients, unscaled."""
        ...

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float | None,
               loss_finite: bool) -> Update:
        """Clip, step the optimizer and the scheduler, zero the gradients.

        Steps neither when ``loss_finite`` is False (the caller decides it alike on every
        process) or a gradient is not finite (decided alike on every process too): the
        weights, the optimizer state and the lr schedule stay as they were.
        """
        ...


class PlainBackward:
    """No wrapper, one process: gradients simply accumulate."""

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(self, loss: Tensor, sync: bool) -> None:
        loss.backward()

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float | None,
               loss_finite: bool) -> Update:
        params = [param for group in optimizer.param_groups for param in group["params"]]
        return _update_if_finite(optimizer, scheduler, params, max_grad_norm, loss_finite, torch.nn.utils.clip_grad_norm_)


class AcceleratorBackward:
    """Accelerate without DeepSpeed (one process, DDP, FSDP): skip the all-reduce via `accelerator.no_sync`.

    Calls `.backward()` itself rather than `accelerator.backward`, which would divide by
    the accelerator's gradient_accumulation_steps; here the caller owns all scaling.
    An fp16 GradScaler, when present, still scales the loss.
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        self.model = model

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext() if sync else self.accelerator.no_sync(self.model)

    def backward(self, loss: Tensor, sync: bool) -> None:
        scaler = self.accelerator.scaler
        (loss if scaler is None else scaler.scale(loss)).backward()

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float | None,
               loss_finite: bool) -> Update:
        return _update_if_finite(optimizer, scheduler, list(self.model.parameters()), max_grad_norm, loss_finite,
                                 self.accelerator.clip_grad_norm_)


class DeepSpeedBackward:
    """DeepSpeed: drive the engine directly and never step inside a step's backwards.

    `accelerator.backward` under DeepSpeed calls `engine.step()` whenever
    `sync_gradients` is True, i.e. after the first chunk's backward, which would update
    the weights mid-batch. Instead each backward sets the accumulation boundary (the
    engine all-reduces at the boundary for ZeRO 0/1; ZeRO 2/3 reduce partitions every
    backward and finalise at the boundary) and calls `engine.backward` with
    `scale_wrt_gas=False` because the caller owns the accumulation scaling.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def sync_context(self, sync: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(self, loss: Tensor, sync: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(sync)
        self.engine.backward(loss, scale_wrt_gas=False)

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float | None,
               loss_finite: bool) -> Update:
        # The engine clips (at its gradient_clipping, which fill_deepspeed_config set from
        # train.max_grad_norm), steps its optimizer and zeroes. Its ZeRO optimizer holds float32
        # weights here (fill_deepspeed_config keeps DeepSpeed's bf16 and fp16 off), and then it
        # discards, by itself, a step whose gradient norm is not finite: gradients zeroed, no
        # update. The norm is all-reduced, so every rank discards together. It holds no
        # scheduler (accelerate hands it only DeepSpeed's own), so this step is the only one.
        self.engine.step()
        applied = self.engine.was_step_applied()
        if applied and not loss_finite:
            # A non-finite loss gives non-finite gradients (the loss's gradient reaches every
            # weight through the embeddings), so the engine cannot have seen finite ones.
            raise RuntimeError("DeepSpeed applied a step whose loss was not finite: its gradients were finite")
        if applied:
            scheduler.step()
        grad_norm = self.engine.get_global_grad_norm()
        return Update(applied, float(grad_norm) if max_grad_norm and grad_norm is not None else None)


def _update_if_finite(optimizer: torch.optim.Optimizer, scheduler: Any, params: Sequence[torch.nn.Parameter],
                      max_grad_norm: float | None, loss_finite: bool,
                      clip: Callable[[Sequence[torch.nn.Parameter], float], torch.Tensor]) -> Update:
    """Clip with ``clip``; step the optimizer and the scheduler only if the loss and the gradient
    norm are finite; zero the gradients either way.

    The norm is finite exactly when every gradient is. Under DDP every process holds the same
    all-reduced gradients (a NaN on one reaches all), so all take the same decision.
    """
    if max_grad_norm:
        grad_norm = float(clip(params, max_grad_norm))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([param.grad for param in params if param.grad is not None]))
    applied = loss_finite and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return Update(applied, grad_norm if max_grad_norm else None)


def make_backward(accelerator: Any, model: torch.nn.Module) -> Backward:
    """The :class:`Backward` for an `accelerate.Accelerator` and the model it prepared.

    Raises RuntimeError under DeepSpeed if `accelerator.prepare` has not built the engine yet.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        wrapped = accelerator.deepspeed_engine_wrapped
        if wrapped is None:
            raise RuntimeError("DeepSpeed engine not built: call accelerator.prepare(model, optimizer) before make_backward")
        return DeepSpeedBackward(wrapped.engine)
    return AcceleratorBackward(accelerator, model)
