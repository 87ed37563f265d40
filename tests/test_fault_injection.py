"""Kill -9 anywhere (train/launchers/fault_injection.py): real runs killed at random moments and
during checkpoint writes resume to the uninterrupted run's weights, with nothing lost on disk;
and the harness's own parts (the check for lost data, the kill of every process) can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest
import torch
from safetensors.torch import save_file

from train.launchers import fault_injection
from train.launchers.fault_injection import (DURING_WRITE, RANDOM, TOLERANCE, folder_problems, kill_run,
                                             marked_processes, run_trials)


def _checkpoint(folder, run, weight: float):
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.full((2, 3), weight)}, folder / "adapter.safetensors")
    (folder / "config.yaml").write_text(f"output_dir: {run}\nseed: 1\n")
    (folder / "accelerate").mkdir()
    (folder / "accelerate" / "optimizer.bin").write_bytes(bytes(range(200)))
    return folder


def test_folder_problems_finds_every_kind_of_damage(tmp_path):
    reference_run, run = tmp_path / "reference", tmp_path / "trial" / "run-0"
    expected = _checkpoint(reference_run / "step-2", reference_run, 0.5)
    got = _checkpoint(run / "step-2", run, 0.5)
    # Equal up to the run folder's path, which the config records.
    assert folder_problems(got, expected, run, reference_run) == []
    # A model card written after publishing may be missing, but when present it must be the reference's.
    (expected / "MODEL_CARD.md").write_text(f"# card of {reference_run}\n")
    assert folder_problems(got, expected, run, reference_run, optional=("MODEL_CARD.md",)) == []
    (got / "MODEL_CARD.md").write_text("")
    assert folder_problems(got, expected, run, reference_run, optional=("MODEL_CARD.md",)) == [
        f"{got / 'MODEL_CARD.md'}: not byte-identical to the reference"]
    (got / "MODEL_CARD.md").unlink()
    (expected / "MODEL_CARD.md").unlink()

    damaged = shutil.copytree(got, tmp_path / "damaged")
    (damaged / "config.yaml").write_text(f"output_dir: {run}\nseed: 2\n")
    (damaged / "accelerate" / "optimizer.bin").write_bytes(bytes(range(100)))  # truncated
    data = (damaged / "adapter.safetensors").read_bytes()
    (damaged / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    (damaged / "stray.tmp").write_text("x")
    problems = folder_problems(damaged, expected, run, reference_run)
    assert [problem.split(": ")[1] for problem in problems] == [
        "unexpected", "not byte-identical to the reference", "unreadable (SafetensorError", "not byte-identical to the reference"]
    assert [problem.split(":")[0] for problem in problems] == [
        str(damaged / name) for name in ("stray.tmp", "accelerate/optimizer.bin", "adapter.safetensors", "config.yaml")]

    (damaged / "config.yaml").unlink()
    save_file({"lora_A": torch.full((2, 3), 0.5 + 2 * TOLERANCE)}, damaged / "adapter.safetensors")
    problems = folder_problems(damaged, expected, run, reference_run)
    assert f"{damaged / 'config.yaml'}: missing" in problems
    assert f"{damaged / 'adapter.safetensors'}: max |Δ| 2.0e-06 from the reference" in problems
    save_file({"lora_A": torch.full((2, 3), 0.5 + TOLERANCE / 2)}, damaged / "adapter.safetensors")
    assert not any("adapter" in problem for problem in folder_problems(damaged, expected, run, reference_run))


def _spawn_tree(tmp_path, launcher_exits: bool) -> tuple[subprocess.Popen, str, int]:
    """A launcher (own session) whose worker runs in a session of its own, as torchrun's do."""
    marker = uuid.uuid4().hex
    worker_pid = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        open({str(worker_pid)!r}, "w").write(str(worker.pid))
        time.sleep({0 if launcher_exits else 600})
    """)
    env = {**os.environ, fault_injection.MARKER: marker}
    launcher = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    while not worker_pid.exists() or not worker_pid.read_text():
        time.sleep(0.01)
    return launcher, marker, int(worker_pid.read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("launcher_exits", [False, True], ids=["whole-tree", "orphaned-worker"])
def test_kill_run_kills_workers_in_sessions_of_their_own(tmp_path, launcher_exits):
    launcher, marker, worker = _spawn_tree(tmp_path, launcher_exits)
    try:
        if launcher_exits:
            launcher.wait()  # the worker is orphaned: only the marker in its environment still leads to it
        assert not _gone(worker)
        kill_run(launcher, marker)
        assert launcher.returncode in ((0,) if launcher_exits else (-9,))
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(worker)
    finally:  # a failing kill_run must not leave its sleepers behind
        for process in marked_processes(marker):
            process.kill()
        launcher.kill()
        launcher.wait()


@pytest.mark.slow
@pytest.mark.parametrize("processes, trials, write_kills", [(1, 2, 1), (2, 1, 1)], ids=["1-process", "2-processes-zero2"])
def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path, processes, trials, write_kills):
    results = run_trials(processes, trials, write_kills, seed=0, work=tmp_path)
    assert [trial.fault for trial in results] == [RANDOM] * trials + [DURING_WRITE] * write_kills
    for trial in results:
        assert trial.finished and trial.data_lost == [] and trial.max_delta <= TOLERANCE, trial.line()
        assert trial.kill_s > 0
        if trial.fault == DURING_WRITE:
            assert trial.write_hit, trial.line()
    table = fault_injection.summary_table(results, {processes: "cmd"})
    assert f"| {DURING_WRITE} | {'1 process' if processes == 1 else '2 processes, ZeRO-2'} | {write_kills} | {write_kills} | 0 |" in table
