"""Two processes launched for real (launch.sh --cpu: the shipped accelerate and DeepSpeed
configs, DeepSpeed's CPU accelerator over gloo) train exactly as one process does on the
same global batch: DDP, ZeRO-2 and ZeRO-3 (each with GradCache, ZeRO-3 also without), with
cross-process negatives; a ZeRO-3 run with the trainable EOS embedding saves complete
weights and resumes exactly.

Tolerances: everything runs in float32 and the two-process runs differ from the
one-process run only in summation order (all-reduce / reduce-scatter of gradients, the
gathered similarity matrix), which leaves ~1e-6 on losses of order 1 and ~1e-7 on the
merged weights after 4 AdamW steps; 2e-5 and 1e-5 leave room for other BLAS builds while
a wrong scale (a scheduler stepped twice, clipping applied twice or not at all, the
gradient of one rank's half of the batch) moves them by 1e-3 or more.

ZeRO-3 really partitions the adapters here: lora.r=16 on hidden size 32 gives the
(16, 32) LoRA A matrices 512 elements, above the 320 (10 x hidden) that the "auto"
stage3_param_persistence_threshold keeps whole on every rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train.finetune as finetune
from tests.distributed import free_port
from tests.tiny_models import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("deepspeed")
    write_tiny_dataset(folder / "a.jsonl", 24, seed=1)
    write_tiny_dataset(folder / "b.jsonl", 24, seed=2)
    config = {
        "model": {"name": str(tiny_model_dir), "max_length": 48, "precision": "fp32"},
        # No dropout: each rank would draw other masks than the one process does.
        "lora": {"r": 16, "alpha": 8, "dropout": 0.0},
        "data": {"mix": None, "dev": None, "datasets": [
            {"name": "a", "path": str(folder / "a.jsonl")},
            {"name": "b", "path": str(folder / "b.jsonl")},
        ]},
        # max_grad_norm=1 clips most steps (gradient norms 2 to 30 here), so clipping is compared too.
        "train": {"max_steps": STEPS, "batch_size": 4, "chunk_size": 3, "lr": 5e-3, "warmup_steps": 1,
                  "max_grad_norm": 1.0, "save_every": 2},
        "wandb": {"mode": "disabled"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _write_dev_task(folder: Path) -> Path:
    """A 4-query retrieval task (the task-folder format of data/prepare.py's dev sets)."""
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"name": "tiny-dev", "type": "retrieval",
                                                  "instruction": "Find the matching text", "symmetric": False,
                                                  "source": "test", "license": "test", "description": "test"}))
    texts = ["the fox crossed the river", "snow on the mountain", "a bird in the tree", "the dog by the sea"]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t + " today"}) + "\n" for i, t in enumerate(texts)))
    (folder / "qrels.jsonl").write_text("".join(json.dumps({"query_id": f"q{i}", "doc_id": f"d{i}", "relevance": 1}) + "\n"
                                                for i in range(len(texts))))
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_process(config: Path, output_dir: Path, *overrides: str) -> Path:
    finetune.main(["--config", str(config), f"output_dir={output_dir}", *overrides])
    return output_dir


def _two_processes(launch_flags: list[str], config: Path, output_dir: Path, *overrides: str) -> str:
    """Run launch.sh as a user would; returns its stdout (the printed command first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    result = subprocess.run([str(ROOT / "launch.sh"), "--cpu", "--nproc", "2", "--main-port", str(free_port()),
                             *launch_flags, str(config), f"output_dir={output_dir}", *overrides],
                            cwd=output_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"launch.sh {' '.join(launch_flags)}: {time.perf_counter() - start:.1f} s")
    return result.stdout


def _log(run_dir: Path) -> dict[int, dict]:
    """The last record of each training step (a resumed run appends its steps again)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {record["step"]: record for record in records if "train/loss" in record}


def _assert_same_training(got: Path, expected: Path) -> None:
    got_log, expected_log = _log(got), _log(expected)
    assert sorted(got_log) == sorted(expected_log) == list(range(1, STEPS + 1))
    for key, tolerance in (("train/loss", 2e-5), ("train/grad_norm", 2e-5), ("train/lr", 1e-12)):
        differences = [abs(got_log[step][key] - expected_log[step][key]) for step in expected_log]
        print(f"{got.name} vs {expected.name}: max |d {key}| = {max(differences):.2e}")
        assert max(differences) < tolerance, (key, differences)
    merged, reference = load_file(got / "export" / "model.safetensors"), load_file(expected / "export" / "model.safetensors")
    assert merged.keys() == reference.keys()
    difference = max((merged[name] - reference[name]).abs().max().item() for name in reference)
    print(f"{got.name} vs {expected.name}: max |d merged weight| = {difference:.2e}")
    assert difference < 1e-5


@pytest.fixture(scope="module")
def mean_pooling_reference(run_config, tmp_path_factory) -> Path:
    return _one_process(run_config, tmp_path_factory.mktemp("one-process") / "mean")


@pytest.mark.slow
@pytest.mark.parametrize("launch_flags, overrides", [
    ([], []),
    (["--zero", "2"], []),
    # GradCache under ZeRO-3: each chunk's replayed forward gathers the partitioned adapters again,
    # and the documents (2 positives + 2 negatives per process) split 3 + 1, an uneven last chunk.
    (["--zero", "3"], []),
    # No chunking: single_forward_step, one forward per backward under ZeRO-3 partitioning.
    (["--zero", "3"], ["train.chunk_size=null"]),
], ids=["ddp", "zero2-gradcache", "zero3-gradcache", "zero3-single-forward"])
def test_two_processes_train_like_one(run_config, mean_pooling_reference, tmp_path, launch_flags, overrides):
    run_dir = tmp_path / "two-processes"
    stdout = _two_processes(launch_flags, run_config, run_dir, *overrides)
    assert stdout.splitlines()[0].split()[0] == "env" and "processes=2" in stdout
    _assert_same_training(run_dir, mean_pooling_reference)
    # accelerate saw both processes: one RNG file per process in every checkpoint.
    states = sorted(path.name for path in (run_dir / "checkpoints" / "step-2" / "accelerate").glob("random_states_*"))
    assert states == ["random_states_0.pkl", "random_states_1.pkl"]


@pytest.mark.slow
def test_zero3_trainable_eos_saves_complete_weights_and_resumes_exactly(run_config, tmp_path):
    # Dev evaluation before, between (eval_every) and after the training steps: ZeRO-3 forwards
    # without grad must leave the gathered weights usable by the next training forward.
    dev = _write_dev_task(tmp_path / "dev")
    eos = ["model.pooling=last", "lora.trainable_eos=true", f"data.dev={dev}", "train.eval_every=2"]
    reference = _one_process(run_config, tmp_path / "one-process", *eos)
    straight = tmp_path / "zero3-straight"
    _two_processes(["--zero", "3"], run_config, straight, *eos)
    _assert_same_training(straight, reference)
    dev_metrics, expected_dev = ({(record["step"], key): value for record in map(json.loads, (run / "log.jsonl").read_text().splitlines())
                                  for key, value in record.items() if key.startswith("dev/")} for run in (straight, reference))
    assert {step for step, _ in dev_metrics} == {0, 2, STEPS} and dev_metrics == pytest.approx(expected_dev, abs=1e-6)
    # The gathered adapter is whole: every shape and value as the one process saved it, the EOS row included.
    adapter = load_file(straight / "checkpoints" / "step-2" / "adapter.safetensors")
    expected = load_file(reference / "checkpoints" / "step-2" / "adapter.safetensors")
    assert {k: v.shape for k, v in adapter.items()} == {k: v.shape for k, v in expected.items()}
    assert any("trainable_tokens_delta" in name for name in adapter)
    # LoRA A and B can each drift a little more than their product (seen: 6e-6 against 1.5e-7 merged).
    assert max((adapter[k] - expected[k]).abs().max().item() for k in expected) < 5e-5

    # A run killed after its step-2 checkpoint leaves exactly that folder (resume ignores .partial ones).
    resumed = tmp_path / "zero3-resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    stdout = _two_processes(["--zero", "3"], run_config, resumed, *eos)
    assert f"resumed from {resumed / 'checkpoints' / 'step-2'} at step 2" in stdout
    assert sorted(_log(resumed)) == [3, 4]
    straight_log, resumed_log = _log(straight), _log(resumed)
    for step in (3, 4):
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert resumed_log[step][key] == pytest.approx(straight_log[step][key], abs=1e-6), (step, key)
    a = load_file(straight / "export" / "model.safetensors")
    b = load_file(resumed / "export" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
