"""Two gloo processes, each with half of a global batch, equal one process holding all of it.

Checks the loss's cross-process negatives and label offsets, the gradient normalisation
(mean over local queries + the wrappers' average over ranks = mean over the global batch),
and GradCache through an accelerate-prepared DDP model with gradient accumulation, where
only the last chunk of the last micro-batch may all-reduce.
"""

import pytest
import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from tests.distributed import run_in_processes
from tests.test_grad_cache import assert_gradients_close, chunks_of, contrastive_batch, lora_gradients, tiny_lora_encoder
from train.backward import make_backward
from train.grad_cache import grad_cache_step
from train.loss import InfoNCELoss

WORLD_SIZE = 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GLOBAL_QUERIES = 6
HARD_NEGATIVES = 1
TEMPERATURE = 0.05
# The second micro-batch of the accumulation test starts further along the sentence list.
SECOND_MICRO_BATCH_OFFSET = 6
# (symmetric, matryoshka_dims): Matryoshka truncates the gathered embeddings (width 32 here).
LOSS_SETTINGS = [(False, None), (True, None), (True, [4, 16])]


def _global_batch(encoder, offset: int = 0):
    return contrastive_batch(encoder, GLOBAL_QUERIES, HARD_NEGATIVES, offset)


def _rank_slice(batch, rank: int):
    """This rank's contiguous share of a global batch (queries, documents, and their keys)."""
    queries, documents, query_keys, document_keys = batch
    q = GLOBAL_QUERIES // WORLD_SIZE
    p = q * (1 + HARD_NEGATIVES)
    q_rows, d_rows = slice(rank * q, (rank + 1) * q), slice(rank * p, (rank + 1) * p)
    return (
        queries[q_rows],
        documents[d_rows],
        query_keys[q_rows],
        document_keys[d_rows],
    )


def _loss_value(encoder, batch, symmetric: bool, matryoshka_dims: list[int] | None = None) -> torch.Tensor:
    queries, documents, query_keys, document_keys = batch
    loss = InfoNCELoss(TEMPERATURE, symmetric, matryoshka_dims)
    return loss(encoder.embed(encoder.collate(queries)), encoder.embed(encoder.collate(documents)), query_keys, document_keys)


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def _ranks_worker(rank: int, world_size: int) -> dict:
    """Per symmetric setting: rank-mean loss and rank-averaged LoRA gradients; then GradCache under DDP."""
    results = {}
    encoder = tiny_lora_encoder(lora_dropout=0.0)
    local = _rank_slice(_global_batch(encoder), rank)
    for symmetric, matryoshka_dims in LOSS_SETTINGS:
        encoder.model.zero_grad(set_to_none=True)
        loss = _loss_value(encoder, local, symmetric, matryoshka_dims)
        loss.backward()
        # What DDP/DeepSpeed do to gradients: average over ranks.
        gradients = {name: _mean_over_ranks(g) for name, g in lora_gradients(encoder).items()}
        results[(symmetric, str(matryoshka_dims))] = (_mean_over_ranks(loss), gradients)

    # Without cpu=True (or ACCELERATE_USE_CPU=1) accelerate on a GPU-less machine ignores WORLD_SIZE and wraps nothing.
    accelerator = Accelerator(cpu=True)
    encoder.model.zero_grad(set_to_none=True)
    encoder.model = accelerator.prepare(encoder.model)
    results["wrapped_in_ddp"] = isinstance(encoder.model, DistributedDataParallel)
    allreduce_calls = []

    def counting_allreduce(state, bucket):
        allreduce_calls.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    encoder.model.register_comm_hook(None, counting_allreduce)
    backward_strategy = make_backward(accelerator, encoder.model)
    losses, calls_after_each_micro_batch = [], []
    # Two accumulated micro-batches: the caller scales each loss by 1/2 and syncs only on the last.
    for offset, sync in ((0, False), (SECOND_MICRO_BATCH_OFFSET, True)):
        queries, documents, query_keys, document_keys = _rank_slice(_global_batch(encoder, offset), rank)
        loss = InfoNCELoss(TEMPERATURE, symmetric=True)

        def half_loss(q, p, query_keys=query_keys, document_keys=document_keys, loss=loss):
            return loss(q, p, query_keys, document_keys) / 2

        # 3 local queries in chunks of 2 (2, 1); 6 local documents in chunks of 4 (4, 2).
        step_loss = grad_cache_step(
            encoder.embed, chunks_of(queries, 2, encoder.collate), chunks_of(documents, 4, encoder.collate), half_loss,
            backward_strategy, sync=sync
        )
        losses.append(_mean_over_ranks(step_loss))
        calls_after_each_micro_batch.append(len(allreduce_calls))
    gradients = {name.removeprefix("module."): g for name, g in lora_gradients(encoder).items()}
    results["grad_cache"] = (sum(losses), gradients, calls_after_each_micro_batch)
    return results


@pytest.fixture(scope="module")
def rank_results() -> list[dict]:
    return run_in_processes(_ranks_worker, world_size=WORLD_SIZE)


@pytest.fixture(scope="module")
def one_process_encoder():
    return tiny_lora_encoder(lora_dropout=0.0)


def _one_process(encoder, losses_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    encoder.model.zero_grad(set_to_none=True)
    loss = losses_of(encoder)
    loss.backward()
    return loss.detach(), lora_gradients(encoder)


@pytest.mark.slow
@pytest.mark.parametrize("symmetric, matryoshka_dims", LOSS_SETTINGS)
def test_two_ranks_equal_one_process_with_the_global_batch(rank_results, one_process_encoder, symmetric,
                                                           matryoshka_dims):
    expected_loss, expected = _one_process(
        one_process_encoder, lambda encoder: _loss_value(encoder, _global_batch(encoder), symmetric, matryoshka_dims)
    )
    for results in rank_results:
        loss, gradients = results[(symmetric, str(matryoshka_dims))]
        assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
        assert_gradients_close(gradients, expected)


@pytest.mark.slow
def test_grad_cache_under_ddp_with_accumulation_equals_one_process(rank_results, one_process_encoder):
    def accumulated_loss(encoder):
        first = _loss_value(encoder, _global_batch(encoder), symmetric=True)
        second = _loss_value(encoder, _global_batch(encoder, SECOND_MICRO_BATCH_OFFSET), symmetric=True)
        return (first + second) / 2

    expected_loss, expected = _one_process(one_process_encoder, accumulated_loss)
    for results in rank_results:
        assert results["wrapped_in_ddp"]
        loss, gradients, allreduce_calls = results["grad_cache"]
        assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
        assert_gradients_close(gradients, expected)
        # No all-reduce during the first micro-batch; the LoRA gradients fit one DDP bucket,
        # so the single synchronising backward (last chunk, last micro-batch) reduces once.
        assert allreduce_calls == [0, 1]
