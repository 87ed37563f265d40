"""The fine-tuning entry point end to end on a tiny random Llama: loss from the run's log,
exact resume, merged export equal to the unmerged model, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train.finetune as finetune
from models import EchoEncoder
from echo_base import staging_folder
from evaluation.tasks import evaluate_task, resolve_tasks
from models.lora import LoraConfig, apply_lora, load_trainable_state
from train.checkpoint import Checkpointer
from tests.tiny_models import tiny_run_config

PROBE_TEXTS = ["the fox crossed the river", "snow on the mountain", "a bird in the tree"]


@pytest.fixture()
def run_config(tmp_path, tiny_model_dir):
    """A config for a 4-step run on two small datasets (tests.tiny_models.tiny_run_config)."""
    return tiny_run_config(tmp_path, tiny_model_dir)


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {record["step"]: record["train/loss"] for record in records if "train/loss" in record}


def test_training_lowers_the_loss_and_logs_every_step(run_config, tmp_path):
    export = finetune.main(["--config", str(run_config), "train.max_steps=8", "train.lr=2e-2",
                            "model.max_length=128", "export.eval_tasks=[toy]", "export.eval_max_examples=8"])
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9))
    assert all(np.isfinite(list(losses.values())))
    assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]])
    card = (export / "README.md").read_text()
    assert (export / "echo_config.json").is_file() and "\n# Echo embedding model fine-tuned from" in card
    final = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    # The scores logged at the end are the export's own, recomputed here through the merged model.
    toy = EchoEncoder.from_pretrained(str(export), dtype="float32")
    expected = evaluate_task(toy, resolve_tasks(["toy"])["toy"], max_examples=8)
    assert (final["eval/toy/S1"], final["eval/toy/S2"]) == pytest.approx((expected["S1"], expected["S2"]), abs=1e-9)
    assert final["eval/mean"] == pytest.approx((expected["S1"] + expected["S2"]) / 2, abs=1e-9)
    assert f"### eval/toy\n\n| metric | value |\n|---|---|\n| S1 | {final['eval/toy/S1']:.4f} |" in card


def test_last_token_training_lowers_the_loss(run_config, tmp_path):
    """Last-token pooling with a trainable EOS learns as mean pooling does: on SmolLM2 it collapses
    (README, the recipe ablation), and this keeps that from being a fault of the training path."""
    finetune.main(["--config", str(run_config), "train.max_steps=8", "train.lr=5e-3", "model.max_length=128",
                   "model.pooling=last", "lora.trainable_eos=true", "export.enabled=false"])
    losses = _losses(tmp_path / "run")
    assert all(np.isfinite(list(losses.values())))
    assert np.mean([losses[7], losses[8]]) < 0.5 * np.mean([losses[1], losses[2]])


def test_resume_after_a_crash_equals_the_uninterrupted_run(run_config, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    finetune.main(["--config", str(run_config), f"output_dir={straight}", "train.save_every=2"])

    resumed = tmp_path / "resumed"
    real_save = Checkpointer.save

    def save_then_crash(self, step):
        real_save(self, step)
        raise KeyboardInterrupt("simulated crash right after the step-2 checkpoint")

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(["--config", str(run_config), f"output_dir={resumed}", "train.save_every=2"])
    monkeypatch.setattr(Checkpointer, "save", real_save)
    # A half-written later checkpoint must be ignored by resume=auto.
    staging_folder(resumed / "checkpoints" / "step-3")
    finetune.main(["--config", str(run_config), f"output_dir={resumed}", "train.save_every=2"])

    assert _losses(resumed) == pytest.approx(_losses(straight), abs=1e-6)
    a = load_file(straight / "checkpoints" / "step-4" / "adapter.safetensors")
    b = load_file(resumed / "checkpoints" / "step-4" / "adapter.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.parametrize("pooling, trainable_eos", [("mean", False), ("last", True)])
def test_merged_export_equals_the_unmerged_model(run_config, tmp_path, tiny_model_dir, pooling, trainable_eos):
    export = finetune.main(["--config", str(run_config), f"model.pooling={pooling}",
                            f"lora.trainable_eos={str(trainable_eos).lower()}", "train.lr=5e-2"])
    spec = json.loads((tmp_path / "run" / "checkpoints" / "step-4" / "export_spec.json").read_text())
    unmerged = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo_instruct", pooling=pooling,
                                           max_length=48, dtype="float32")
    unmerged.model = apply_lora(unmerged.model, LoraConfig.model_validate(spec["lora"]), unmerged.tokenizer.eos_token_id)
    adapter = load_file(tmp_path / "run" / "checkpoints" / "step-4" / "adapter.safetensors")
    load_trainable_state(unmerged.model, adapter, source="test")
    merged = EchoEncoder.from_pretrained(str(export), dtype="float32")
    assert (merged.mode, merged.pooling, merged.max_length) == ("echo_instruct", pooling, 48)
    base = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo_instruct", pooling=pooling, dtype="float32")
    for kind in ("query", "document"):
        expected = unmerged.encode(PROBE_TEXTS, kind=kind, instruction="Find the matching text")
        got = merged.encode(PROBE_TEXTS, kind=kind, instruction="Find the matching text")
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # Training changed the model: the export is not just the base model.
        assert np.abs(base.encode(PROBE_TEXTS, kind=kind, instruction="Find the matching text") - got).max() > 1e-3
    if trainable_eos:
        assert any("trainable_tokens" in name for name in adapter)


def test_a_matryoshka_run_trains_its_widths_and_its_export_records_them(run_config, tmp_path):
    plain = finetune.main(["--config", str(run_config), "train.max_steps=2", f"output_dir={tmp_path / 'plain'}"])
    export = finetune.main(["--config", str(run_config), "train.max_steps=2", "train.matryoshka_dims=[16,8]"])
    # The same first batch and initial weights: the loss differs only by the widths' terms.
    assert abs(_losses(tmp_path / "run")[1] - _losses(tmp_path / "plain")[1]) > 1e-4
    assert json.loads((export / "echo_config.json").read_text())["matryoshka_dims"] == [8, 16]
    assert json.loads((plain / "echo_config.json").read_text())["matryoshka_dims"] is None
    assert "- **Matryoshka dimensions:** 8, 16 (trained" in (export / "README.md").read_text()
    encoder = EchoEncoder.from_pretrained(str(export), dtype="float32")
    assert encoder.matryoshka_dims == (8, 16)
    full = encoder.encode(PROBE_TEXTS, kind="document")
    for dim in (8, 16, 32):
        expected = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        np.testing.assert_allclose(encoder.encode(PROBE_TEXTS, kind="document", dim=dim), expected, atol=1e-6)
    with pytest.raises(ValueError, match="dim=33 exceeds the embedding width 32"):
        encoder.encode(PROBE_TEXTS, kind="document", dim=33)
    with pytest.raises(ValueError, match="matryoshka_dims \\[8, 64\\] must be widths in 1..32"):
        finetune.main(["--config", str(run_config), "train.matryoshka_dims=[8,64]", f"output_dir={tmp_path / 'wide'}"])


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(finetune.__file__)), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_bad_config_keys_and_arguments_end_in_one_line(run_config, tmp_path):
    result = _cli(["--config", str(run_config), "train.max_stpes=3", "model.pooling=max"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.max_stpes: unknown key" in lines[0] and "model.pooling" in lines[0]
    result = _cli(["--config", str(run_config), "--lr", "3"], tmp_path)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_malformed_row_stops_the_run_before_anything_is_written(run_config, tmp_path):
    rows = (tmp_path / "b.jsonl").read_text().splitlines()
    rows[6] = json.dumps({"query": "q", "positive": "", "negatives": ["n"]})
    (tmp_path / "b.jsonl").write_text("\n".join(rows) + "\n")
    result = _cli(["--config", str(run_config)], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "b.jsonl:7" in lines[0] and "positive" in lines[0]
    assert not (tmp_path / "run").exists()
