"""One optimizer step of contrastive training, with every strategy decided once.

    step = TrainingStep(accelerator, model, encoder, optimizer, scheduler, loss_fn,
                        chunk_size=16, chunk_tokens=None, accumulation_steps=1, max_grad_norm=1.0)
    result = step(batches)  # draws one ContrastiveBatch per accumulation step from a ContrastiveBatches

At construction the step picks how gradients reach the weights (:mod:`train.backward`:
plain, DDP or DeepSpeed) and how each contrastive batch is embedded and backpropagated:
in one forward (no chunk cap) or with GradCache in chunks of at most ``chunk_size``
sequences and ``chunk_tokens`` tokens, grouped by length (:mod:`train.grad_cache`). The
encoder's ``packing`` decides whether each forward is packed or padded. A call then draws ``accumulation_steps``
micro-batches, scales each loss by their number, synchronises gradients on the last
backward only, and updates once. Nothing is re-decided inside the loop.

A step whose loss or gradient is NaN or infinite on any process is never applied
(:mod:`train.backward`); :class:`NonFiniteGuard` decides what the run does next
(``train.on_nonfinite``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from accelerate import Accelerator
from torch import Tensor

from echo_base import NonFiniteError
from models import EchoEncoder
from train.backward import make_backward
from models.zero3 import is_zero3_partitioned
from train.collate import ContrastiveBatch, chunk_prompts, in_batch_order
from train.grad_cache import grad_cache_step, single_forward_step
from train.loss import InfoNCELoss
from train.training_data import ContrastiveBatches


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did, over all processes."""

    loss: float  # the mean contrastive loss of the global batch
    grad_norm: float | None  # before clipping; None when clipping is off
    lr: float  # the learning rate the next step will use
    num_tokens: int  # real prompt tokens embedded (with every copy and template token)
    num_queries: int
    seconds: float  # wall time of the step on this process, collation included
    applied: bool = True  # False: the loss or a gradient was not finite, and the weights did not change
    rows: tuple[int, ...] = ()  # the examples of the step's batches (all processes), as indices into the training data


class TrainingStep:
    """Callable: draws this process's micro-batches, makes one update, returns a StepResult."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        encoder: EchoEncoder,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: InfoNCELoss,
        *,
        chunk_size: int | None,
        chunk_tokens: int | None,
        accumulation_steps: int,
        max_grad_norm: float | None,
    ) -> None:
        self.accelerator = accelerator
        self.encoder = encoder
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.chunk_tokens = chunk_tokens
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.backward = make_backward(accelerator, model)
        self.first_pass_inference_mode = not is_zero3_partitioned(model)
        grad_cache = chunk_size is not None or chunk_tokens is not None
        self._forward_backward = self._grad_cache if grad_cache else self._single_forward

    def __call__(self, batches: ContrastiveBatches) -> StepResult:
        started = time.perf_counter()
        micro_batches = batches.next_step(self.accumulation_steps)
        local_loss = 0.0
        for index, batch in enumerate(micro_batches):
            # Each contrastive batch's loss is divided by the number of micro-batches, so the
            # summed gradients are those of their mean; ranks are averaged by DDP/DeepSpeed.
            scaled_loss = partial(self._scaled_loss, batch, len(micro_batches))
            sync = index == len(micro_batches) - 1
            local_loss += self._forward_backward(batch, scaled_loss, sync).item()
        world = self.accelerator.num_processes
        # The logged loss is the mean over processes of each one's local mean: the global-batch loss.
        # One process's non-finite loss makes it non-finite, so every process decides alike below.
        loss = self.accelerator.reduce(torch.tensor(local_loss, device=self.accelerator.device), "mean").item()
        update = self.backward.update(self.optimizer, self.scheduler, self.max_grad_norm, loss_finite=math.isfinite(loss))
        return StepResult(
            loss=loss,
            grad_norm=update.grad_norm,
            lr=self.scheduler.get_last_lr()[0],
            # Every process holds an equal share of each batch, so this process's count scales.
            num_tokens=sum(batch.num_tokens for batch in micro_batches) * world,
            num_queries=sum(len(batch.queries) for batch in micro_batches) * world,
            seconds=time.perf_counter() - started,
            applied=update.applied,
            rows=tuple(row for batch in micro_batches for row in batch.rows),
        )

    def _scaled_loss(self, batch: ContrastiveBatch, micro_batches: int, queries: Tensor, documents: Tensor) -> Tensor:
        return self.loss_fn(queries, documents, batch.query_keys, batch.document_keys) / micro_batches

    def _single_forward(self, batch: ContrastiveBatch, loss_fn: Callable[[Tensor, Tensor], Tensor], sync: bool) -> Tensor:
        joint = self.encoder.collate(batch.queries + batch.documents)
        return single_forward_step(self.encoder.embed, joint, len(batch.queries), loss_fn, self.backward, sync)

    def _grad_cache(self, batch: ContrastiveBatch, loss_fn: Callable[[Tensor, Tensor], Tensor], sync: bool) -> Tensor:
        query_chunks, query_order = self._chunks(batch.queries)
        document_chunks, document_order = self._chunks(batch.documents)

        def loss_in_chunk_order(queries: Tensor, documents: Tensor) -> Tensor:
            return loss_fn(in_batch_order(queries, query_order), in_batch_order(documents, document_order))

        return grad_cache_step(self.encoder.embed, query_chunks, document_chunks, loss_in_chunk_order, self.backward,
                               sync, inference_mode=self.first_pass_inference_mode)

    def _chunks(self, prompts: list) -> tuple[list[dict[str, Tensor]], Tensor]:
        return chunk_prompts(prompts, self.chunk_size, self.chunk_tokens, self.encoder.collate,
                             packed=self.encoder.packing)


class NonFiniteGuard:
    """What the run does after a step that was not applied because its loss or a gradient was not finite.

    ``skip`` (``train.on_nonfinite``): one warning line, and training goes on; the batch is
    consumed (the sampler has moved past it), while the weights, the optimizer state and the
    lr schedule stay as before the step, so the schedule counts applied updates only. More
    than ``max_skips`` such steps in a row stop the run. ``stop``: the first one does.
    Stopping raises NonFiniteError; every message names the step, the dataset and the rows.
    """

    def __init__(self, policy: Literal["skip", "stop"], max_skips: int, describe_rows: Callable[[Sequence[int]], str],
                 warn: Callable[[str], None]) -> None:
        self.policy = policy
        self.max_skips = max_skips
        self.describe_rows = describe_rows  # e.g. TrainingData.describe_rows
        self.warn = warn  # prints one warning line, e.g. RunLogger.warn
        self.skipped_in_a_row = 0

    def __call__(self, step_number: int, result: StepResult) -> None:
        """Raises NonFiniteError when the run must stop after ``result``."""
        if result.applied:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        norm = "" if result.grad_norm is None else f", gradient norm {result.grad_norm}"
        what = (f"step {step_number}: loss {result.loss}{norm}: a loss or gradient not finite, not applied; "
                f"its batch: {self.describe_rows(result.rows)}")
        if self.policy == "stop":
            raise NonFiniteError(f"{what} (train.on_nonfinite=stop)")
        if self.skipped_in_a_row > self.max_skips:
            raise NonFiniteError(f"{what}; {self.skipped_in_a_row} steps in a row were not finite, more than "
                                 f"train.max_nonfinite_skips={self.max_skips}")
        self.warn(f"{what}; skipped (train.on_nonfinite=skip)")
