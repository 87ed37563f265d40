"""One run per output folder: a live run's lock refuses a second run (naming its pid and host), a
killed run's lock blocks nothing, and a fresh run into a folder with checkpoints is refused
unless train.resume=overwrite asks for it; all through the real training command line."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

import train.run_folder as run_folder
from echo_base import UsageError
from tests.fuzz_inputs import ROOT, Workspace, listing, run_invocation
from train.run_folder import LOCK_FILE, RunFolderBusyError, check_run_folder, lock_run_folder, release_run_folder

# A process that holds a folder's lock as a run does, until it is killed.
HOLDER = ("import sys, time; from pathlib import Path; from train.run_folder import lock_run_folder; "
          "lock_run_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")


def _hold(folder) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture()
def space(tmp_path, tiny_model_dir, one_torch_thread) -> Workspace:
    return Workspace(tmp_path, tiny_model_dir, random.Random(0))


def test_a_second_run_on_a_folder_that_a_live_run_holds_is_refused(space):
    holder = _hold(space.output_dir)
    try:
        invocation = space.run("wandb.mode=disabled")
        before = listing(space.folder)
        status, stderr = run_invocation(invocation, space.folder)
        line = _one_line(stderr)
        assert status == 2
        assert f"output_dir {space.output_dir} is in use by another run (pid {holder.pid} on {socket.gethostname()}" in line
        assert listing(space.folder) == before  # the holder's lock file untouched, nothing else written
        # Taking the lock itself (a run that passed the check a moment before the other took it) is refused too.
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid} on {socket.gethostname()}"):
            lock_run_folder(space.output_dir)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_blocks_nothing(space):
    holder = _hold(space.output_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = space.output_dir / LOCK_FILE
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the dead run's file is still there

    status, stderr = run_invocation(space.run("wandb.mode=disabled"), space.folder)
    assert status == 0, stderr
    assert (space.output_dir / "checkpoints" / "step-2" / "state.json").is_file()
    assert not lock.exists()  # released at the end of the run


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused_unless_asked_to_overwrite(space):
    # What an earlier, longer run left: checkpoints up to step 4 and its log.
    for step in (2, 4):
        checkpoint = space.output_dir / "checkpoints" / f"step-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.json").write_text(json.dumps({"step": step}))
    (space.output_dir / "log.jsonl").write_text(json.dumps({"step": 4, "train/loss": 99.0}) + "\n")
    refused = space.run("wandb.mode=disabled", "train.resume=none")
    before = listing(space.folder)

    status, stderr = run_invocation(refused, space.folder)
    line = _one_line(stderr)
    assert status == 2
    assert f"train.resume=none: {space.output_dir} already holds 2 checkpoint(s)" in line and "train.resume=overwrite" in line
    assert listing(space.folder) == before

    status, stderr = run_invocation(space.run("wandb.mode=disabled", "train.resume=overwrite"), space.folder)
    assert status == 0, stderr
    # Only this 2-step run is left: resume=auto could not pick the earlier run's step 4 any more.
    assert sorted(path.name for path in (space.output_dir / "checkpoints").iterdir()) == ["step-2"]
    assert json.loads((space.output_dir / "checkpoints" / "step-2" / "state.json").read_text())["step"] == 2
    records = [json.loads(line) for line in (space.output_dir / "log.jsonl").read_text().splitlines()]
    assert {record["step"] for record in records} == {1, 2} and all(record.get("train/loss") != 99.0 for record in records)


def test_lock_records_its_holder_is_kept_by_it_and_released(tmp_path):
    folder = tmp_path / "run"
    lock_run_folder(folder)
    try:
        owner = json.loads((folder / LOCK_FILE).read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        lock_run_folder(folder)  # this process holds it already: kept (an earlier run in it raised)
        check_run_folder(folder)  # this process's own lock does not refuse it
    finally:
        release_run_folder(folder)
    assert not (folder / LOCK_FILE).exists()
    release_run_folder(folder)  # not held: nothing to do
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_run_folder(tmp_path / "file" / "run")


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch):
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="has no file locks"):
        lock_run_folder(tmp_path / "run")
    release_run_folder(tmp_path / "run")
