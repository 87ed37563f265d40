"""launch.sh's commands and one-line errors, the shipped DeepSpeed configs' "auto" values
as the run config fills them, and the loud check of accelerate's view of the processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

import train.finetune as finetune
from train.accelerator import ProcessViewError, check_process_view, fill_deepspeed_config
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.sh"


def _launch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCH), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _dry_run(*args: str) -> str:
    result = _launch("--dry-run", *args, "configs/echo_lora.yaml", "train.max_steps=3")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_help_documents_every_flag():
    result = _launch("--help")
    assert result.returncode == 0
    for flag in ("--gpus", "--cpu", "--nproc", "--zero", "--offload", "--num-machines", "--machine-rank",
                 "--main-address", "--main-port", "--hostfile", "sweep"):
        assert flag in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--zero", "4", "configs/echo_lora.yaml"], "--zero is 2 or 3"),
    (["--bogus", "configs/echo_lora.yaml"], "unknown option '--bogus'"),
    (["--cpu", "--offload", "configs/echo_lora.yaml"], "--offload needs --zero 3"),
    (["--cpu", "--gpus", "2", "configs/echo_lora.yaml"], "--gpus and --cpu exclude each other"),
    (["--nproc", "2", "configs/echo_lora.yaml"], "--nproc goes with --cpu"),
    (["--cpu", "--nproc", "two", "configs/echo_lora.yaml"], "--nproc needs a positive integer"),
    (["--cpu", "no/such.yaml"], "CONFIG no/such.yaml: no such file"),
    (["--cpu", "configs/echo_lora.yaml", "train.max_steps"], "'train.max_steps' is not a section.key=value"),
    (["--gpus", "8", "--num-machines", "2", "configs/echo_lora.yaml"], "needs --machine-rank, --main-address"),
    (["--cpu", "--zero"], "--zero needs a value"),
])
def test_bad_flags_end_in_one_line_and_exit_2(args, message):
    result = _launch(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and result.stdout == ""


def test_cpu_deepspeed_uses_deepspeeds_cpu_accelerator_not_accelerates_cpu_flag():
    command = _dry_run("--cpu", "--nproc", "2", "--zero", "3", "--main-port", "29999")
    # ACCELERATE_USE_CPU would turn DeepSpeed off; accelerate launch --cpu too.
    assert command.startswith("env DS_ACCELERATOR=cpu ACCELERATE_USE_CPU=false accelerate launch ")
    assert f"--config_file {ROOT}/configs/accelerate/zero3.yaml" in command
    assert f"--deepspeed_config_file {ROOT}/configs/deepspeed/zero3.json" in command
    assert " --cpu " not in command and "--num_processes 2 " in command and "--main_process_port 29999" in command
    assert command.endswith(f"{ROOT}/train/finetune.py --config configs/echo_lora.yaml train.max_steps=3")


def test_cpu_ddp_sets_accelerate_use_cpu():
    command = _dry_run("--cpu", "--nproc", "2")
    assert command.startswith("env ACCELERATE_USE_CPU=1 accelerate launch ")
    assert f"--config_file {ROOT}/configs/accelerate/ddp.yaml" in command and "deepspeed" not in command


def test_multi_node_settings_pass_through_and_count_every_process():
    command = _dry_run("--gpus", "8", "--zero", "3", "--offload", "--num-machines", "2", "--machine-rank", "1",
                       "--main-address", "10.0.0.1", "--main-port", "29500")
    assert "DS_ACCELERATOR" not in command and "zero3_offload.yaml" in command and "zero3_offload.json" in command
    assert "--num_processes 16 --num_machines 2" in command
    assert "--machine_rank 1 --main_process_ip 10.0.0.1 --main_process_port 29500" in command


def test_hostfile_goes_to_deepspeeds_pdsh_launcher(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    command = _dry_run("--gpus", "8", "--zero", "2", "--num-machines", "2", "--main-address", "node1",
                       "--main-port", "29500", "--hostfile", str(hostfile))
    assert f"--deepspeed_hostfile {hostfile} --deepspeed_multinode_launcher pdsh" in command


def _deepspeed_accelerator(config_file: Path, processes: int) -> SimpleNamespace:
    plugin = SimpleNamespace(deepspeed_config=json.loads(config_file.read_text()))
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_shipped_deepspeed_configs_take_batch_clipping_and_precision_from_the_run(stage):
    accelerator = _deepspeed_accelerator(ROOT / "configs" / "deepspeed" / f"{stage}.json", processes=4)
    fill_deepspeed_config(accelerator, TrainConfig(batch_size=32, gradient_accumulation_steps=2, max_grad_norm=0.3))
    filled = accelerator.state.deepspeed_plugin.deepspeed_config
    assert filled["gradient_clipping"] == 0.3  # accelerate alone would have put 1.0 here
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"], filled["train_batch_size"]) == (8, 2, 64)
    assert filled["bf16"] == {"enabled": False} and filled["fp16"] == {"enabled": False}
    # Every accelerate config that names this file reaches it from the repository root.
    yaml_text = (ROOT / "configs" / "accelerate" / f"{stage}.yaml").read_text()
    assert f"deepspeed_config_file: configs/deepspeed/{stage}.json" in yaml_text


def test_clipping_off_in_the_run_is_off_in_deepspeed(tmp_path):
    accelerator = _deepspeed_accelerator(ROOT / "configs" / "deepspeed" / "zero2.json", processes=2)
    fill_deepspeed_config(accelerator, TrainConfig(batch_size=4, max_grad_norm=None))
    assert accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.0


def test_an_explicit_deepspeed_value_that_disagrees_with_the_run_is_an_error(tmp_path):
    config = json.loads((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    config["gradient_clipping"] = 1.0
    config["bf16"] = {"enabled": True}
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(config))
    accelerator = _deepspeed_accelerator(custom, processes=2)
    with pytest.raises(ValueError, match=r"gradient_clipping=1.0 disagrees with train.max_grad_norm=0.5"):
        fill_deepspeed_config(accelerator, TrainConfig(batch_size=4, max_grad_norm=0.5))
    with pytest.raises(ValueError, match=r"bf16.enabled=True disagrees with model.precision"):
        fill_deepspeed_config(accelerator, TrainConfig(batch_size=4, max_grad_norm=1.0))


def test_process_view_mismatches_are_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    alone = SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1, process_index=0)
    with pytest.raises(ProcessViewError, match="WORLD_SIZE=2.*num_processes=1.*ACCELERATE_USE_CPU=1"):
        check_process_view(alone)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ProcessViewError, match="runs without DeepSpeed: ACCELERATE_USE_CPU=1"):
        check_process_view(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, process_index=0))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_process_view(alone)  # one process, seen as one: fine


def test_finetune_launched_without_a_process_group_stops_in_one_line(tmp_path):
    """Two processes started as DDP on CPU without ACCELERATE_USE_CPU would each train alone."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run([sys.executable, str(Path(finetune.__file__)), "--config", str(ROOT / "configs" / "echo_lora.yaml"),
                             f"output_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "process view mismatch" in lines[0] and "ACCELERATE_USE_CPU=1" in lines[0]
    assert not (tmp_path / "run").exists()
