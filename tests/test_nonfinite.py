"""A NaN or infinite loss or gradient is never applied: ``train.on_nonfinite=skip`` consumes the
batch and leaves weights, optimizer state and lr schedule as they were (the same weights as a
run that never saw that batch), ``stop`` and too many skips in a row end the run in one line
naming the step, the dataset and the rows; no checkpoint or export ever holds a non-finite weight.

The fault is injected where a real one surfaces: the loss of one step times NaN, so the
gradients of every weight are NaN too, as with a NaN from the data or an overflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import train.finetune as finetune
from data.sampler import SingleDatasetBatchSampler
from echo_base import NonFiniteError
from models.export import export_merged
from train.backward import PlainBackward
from train.loss import InfoNCELoss
from train.step import TrainingStep
from train.training_data import ContrastiveBatches
from tests.distributed import run_in_processes
from tests.test_grad_cache import contrastive_batch, tiny_lora_encoder
from tests.tiny_models import tiny_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROWS = 24  # per dataset file (tiny_run_config)


@pytest.fixture()
def config(tmp_path, tiny_model_dir) -> Path:
    # A constant lr and no dropout: a run that skips a step and one that never saw its batch
    # then make the same updates with the same numbers.
    return tiny_run_config(tmp_path, tiny_model_dir, scheduler="constant", warmup_steps=0)


def _nan_loss_at(monkeypatch, steps: set[int]) -> None:
    """The loss of these steps (1-based; one loss per step here) times NaN: every gradient turns NaN."""
    real_forward, calls = InfoNCELoss.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        loss = real_forward(self, *args, **kwargs)
        return loss * float("nan") if len(calls) in steps else loss

    monkeypatch.setattr(InfoNCELoss, "forward", forward)


def _expected_rows(folder: Path, step: int) -> str:
    """The rows of ``step``'s batch, computed from the sampler's order: dataset a's rows come first, then b's."""
    sampler = SingleDatasetBatchSampler(["a"] * ROWS + ["b"] * ROWS, batch_size=4, seed=42)
    rows = sampler.batches_of_epoch(0)[step - 1]
    dataset = "a" if rows[0] < ROWS else "b"
    lines = sorted(row % ROWS + 1 for row in rows)
    return f"dataset {dataset}: {folder / f'{dataset}.jsonl'} lines {', '.join(map(str, lines))}"


def _adapter(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step}" / "adapter.safetensors")


@pytest.mark.parametrize("chunk_size", [3, None], ids=["grad-cache", "single-forward"])
def test_a_skipped_step_leaves_the_weights_of_a_run_that_never_saw_its_batch(config, tmp_path, monkeypatch, capsys,
                                                                              chunk_size):
    common = ["--config", str(config), "lora.dropout=0.0", f"train.chunk_size={'null' if chunk_size is None else chunk_size}",
              "export.enabled=false"]
    skipped = tmp_path / "skipped"
    _nan_loss_at(monkeypatch, {3})
    finetune.main([*common, f"output_dir={skipped}", "train.max_steps=5"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: step")]
    assert warnings == [f"warning: step 3: loss nan, gradient norm nan: a loss or gradient not finite, not applied; "
                        f"its batch: {_expected_rows(tmp_path, 3)}; skipped (train.on_nonfinite=skip)"]
    monkeypatch.undo()

    # The reference never sees step 3's batch: it draws it and throws it away, then trains 4 steps.
    never_saw = tmp_path / "never-saw"
    real_next_step, steps = ContrastiveBatches.next_step, []

    def next_step_without_the_third_batch(self, micro_batches):
        steps.append(1)
        if len(steps) == 3:
            real_next_step(self, micro_batches)
        return real_next_step(self, micro_batches)

    monkeypatch.setattr(ContrastiveBatches, "next_step", next_step_without_the_third_batch)
    finetune.main([*common, f"output_dir={never_saw}", "train.max_steps=4"])

    got, expected = _adapter(skipped, 5), _adapter(never_saw, 4)
    assert got.keys() == expected.keys()
    assert max((got[name] - expected[name]).abs().max().item() for name in got) == 0.0
    # Step 3 changed nothing: its checkpoint would equal step 2's; the lr stayed constant throughout.
    log = [json.loads(line) for line in (skipped / "log.jsonl").read_text().splitlines()]
    assert [record["train/loss"] != record["train/loss"] for record in log] == [False, False, True, False, False]


@pytest.mark.parametrize("overrides, nan_steps, reason", [
    (["train.on_nonfinite=stop"], {3}, " (train.on_nonfinite=stop)"),
    (["train.max_nonfinite_skips=1"], {2, 3}, "; 2 steps in a row were not finite, more than train.max_nonfinite_skips=1"),
], ids=["stop", "too-many-skips"])
def test_stopping_ends_in_one_line_naming_step_dataset_and_rows_and_no_checkpoint_holds_nan(
        config, tmp_path, monkeypatch, capsys, overrides, nan_steps, reason):
    _nan_loss_at(monkeypatch, nan_steps)
    run = tmp_path / "run"
    code = finetune.cli(["--config", str(config), f"output_dir={run}", "train.save_every=1", *overrides])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1] == (
        f"error: step 3: loss nan, gradient norm nan: a loss or gradient not finite, not applied; "
        f"its batch: {_expected_rows(tmp_path, 3)}{reason}")
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    for step in (1, 2):
        assert all(torch.isfinite(weight).all() for weight in _adapter(run, step).values())
    assert not (run / "export").exists()


def test_a_save_refuses_non_finite_weights_naming_the_weight(config, tmp_path, monkeypatch, capsys):
    """The last line of defence, should a bug ever bring a NaN into the weights past the step's check."""
    real_call = TrainingStep.__call__

    def step_then_corrupt_a_weight(self, batches):
        result = real_call(self, batches)
        with torch.no_grad():
            self.optimizer.param_groups[0]["params"][0][0, 0] = float("nan")
        return result

    monkeypatch.setattr(TrainingStep, "__call__", step_then_corrupt_a_weight)
    run = tmp_path / "run"
    code = finetune.cli(["--config", str(config), f"output_dir={run}", "train.save_every=1"])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: checkpoint step-1: refused: weight base_model.model.") and "lora_" in last
    assert last.endswith(" holds non-finite values (1 of 128)")  # LoRA A of the first layer: r=4 x hidden 32
    assert not (run / "checkpoints").exists()  # nothing written, not even a staging folder


def test_an_export_refuses_non_finite_weights_before_writing(config, tmp_path):
    run = tmp_path / "run"
    finetune.main(["--config", str(config), f"output_dir={run}", "train.max_steps=1", "export.enabled=false"])
    adapter = _adapter(run, 1)
    name = sorted(adapter)[-1]
    adapter[name][0] = float("inf")
    spec = json.loads((run / "checkpoints" / "step-1" / "export_spec.json").read_text())
    with pytest.raises(NonFiniteError, match=rf"^export {tmp_path / 'export'}: refused: weight {name} holds non-finite"):
        export_merged(spec, adapter, tmp_path / "export")
    assert sorted(path.name for path in tmp_path.iterdir() if "export" in path.name) == []


def test_a_non_finite_gradient_with_a_finite_loss_is_not_applied():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    weight.grad = torch.tensor([1.0, float("inf"), 1.0])
    update = PlainBackward().update(optimizer, scheduler, max_grad_norm=None, loss_finite=True)
    assert not update.applied and update.grad_norm is None
    assert torch.equal(weight.detach(), torch.ones(3)) and weight.grad is None
    assert optimizer.state_dict()["state"] == {} and scheduler.last_epoch == 0  # no AdamW moment, no lr step

    weight.grad = torch.tensor([1.0, 2.0, 2.0])
    update = PlainBackward().update(optimizer, scheduler, max_grad_norm=1.0, loss_finite=True)
    assert update.applied and update.grad_norm == pytest.approx(3.0)
    assert not torch.equal(weight.detach(), torch.ones(3)) and scheduler.last_epoch == 1


def _deepspeed_nan_on_one_rank(rank: int, world_size: int, zero_stage: int) -> dict:
    """Two DeepSpeed ranks: a step whose loss is NaN on rank 1 only, then a finite step."""
    import deepspeed

    from models.lora import trainable_state_dict
    from train.backward import DeepSpeedBackward

    encoder = tiny_lora_encoder(lora_dropout=0.0)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 0.05}}, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": zero_stage}}
    parameters = [p for p in encoder.model.parameters() if p.requires_grad]
    engine, optimizer, *_ = deepspeed.initialize(model=encoder.model, model_parameters=parameters, config=config)
    encoder.model = engine
    scheduler = SimpleNamespace(steps=0)
    scheduler.step = lambda: setattr(scheduler, "steps", scheduler.steps + 1)  # all the update asks of a scheduler
    backward = DeepSpeedBackward(engine)
    queries, documents, query_keys, document_keys = contrastive_batch(encoder, num_queries=2, hard_negatives=1,
                                                                      offset=2 * rank)
    loss_fn = InfoNCELoss(temperature=0.05)
    results = []
    for nan_on_rank_1 in (True, False):
        before = trainable_state_dict(engine.module)
        embeddings = encoder.embed(encoder.collate(queries + documents)).float()
        loss = loss_fn(embeddings[: len(queries)], embeddings[len(queries):], query_keys, document_keys)
        if nan_on_rank_1 and rank == 1:
            loss = loss * float("nan")
        backward.backward(loss, sync=True)
        # As TrainingStep does: the mean of the ranks' losses decides alike on every rank.
        mean_loss = loss.detach().clone()
        torch.distributed.all_reduce(mean_loss)
        update = backward.update(optimizer, scheduler, max_grad_norm=1.0, loss_finite=bool(torch.isfinite(mean_loss)))
        after = trainable_state_dict(engine.module)
        results.append({"applied": update.applied, "lr_steps": scheduler.steps,
                        "changed": max((after[name] - before[name]).abs().max().item() for name in after),
                        "finite": all(torch.isfinite(weight).all().item() for weight in after.values())})
    return {"steps": results}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_under_deepspeed_a_nan_on_one_rank_is_skipped_by_every_rank(zero_stage):
    ranks = run_in_processes(_deepspeed_nan_on_one_rank, world_size=2, args=(zero_stage,))
    for result in ranks:
        nan_step, finite_step = result["steps"]
        assert nan_step == {"applied": False, "lr_steps": 0, "changed": 0.0, "finite": True}
        assert finite_step["applied"] and finite_step["lr_steps"] == 1 and finite_step["changed"] > 1e-4
        assert finite_step["finite"]
