"""Saves the storage refuses end a run in one line naming the path (exit code 2, no traceback) and
leave the checkpoints before them intact and resumable; train.keep_checkpoints keeps the newest N.

The faults are real where the machine allows it: a file size limit (RLIMIT_FSIZE) makes every
write past it fail in the kernel, whichever library writes. A full disk is simulated at the
Python write of a checkpoint file (the OSError a full disk raises there), and a read-only
folder by chmod, or, for root, whom chmod does not stop, by the EROFS a read-only filesystem
gives on mkdir.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

import train.finetune as finetune
from models.export import main as export_main
from train.checkpoint import Checkpointer
from tests.tiny_models import tiny_run_config

STEPS = 6
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoints(run: Path) -> list[str]:
    """Every entry of the checkpoints folder, hidden ones included."""
    return sorted(path.name for path in (run / "checkpoints").iterdir())


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the training command, run in this process."""
    code = finetune.cli(argv)
    return code, capsys.readouterr().err


def _assert_one_error_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [expected]
    assert stderr.rstrip().endswith(expected)  # the last line the run printed


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir) -> Path:
    return tiny_run_config(tmp_path_factory.mktemp("save-faults"), tiny_model_dir, max_steps=STEPS)


@pytest.fixture(scope="module")
def straight(config, tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """The uninterrupted run, saving every step and keeping 2; returns it and the checkpoints after each save."""
    run = tmp_path_factory.mktemp("straight") / "run"
    seen, real_save = [], Checkpointer.save

    def save_and_look(self, step):
        saved = real_save(self, step)
        seen.append(_checkpoints(run))
        return saved

    Checkpointer.save = save_and_look
    try:
        finetune.main(["--config", str(config), f"output_dir={run}", "train.save_every=1", "train.keep_checkpoints=2"])
    finally:
        Checkpointer.save = real_save
    return run, seen


def test_keep_checkpoints_keeps_the_newest_and_deletes_only_after_a_newer_one_is_published(straight):
    _, seen = straight
    assert seen == [["step-1"], ["step-1", "step-2"], ["step-2", "step-3"], ["step-3", "step-4"],
                    ["step-4", "step-5"], ["step-5", "step-6"]]


def test_a_full_disk_during_a_checkpoint_ends_in_one_line_and_the_run_resumes_exactly(config, straight, tmp_path,
                                                                                    monkeypatch, capsys):
    run = tmp_path / "run"
    failing = run / "checkpoints" / ".step-4.partial" / "state.json"
    real_write_text = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self == failing:  # the disk fills up during this write: its first bytes land, then ENOSPC
            real_write_text(self, data[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    argv = ["--config", str(config), f"output_dir={run}", "train.save_every=2", "train.keep_checkpoints=1"]
    code, stderr = _cli(argv, capsys)
    monkeypatch.undo()
    assert code == 2
    _assert_one_error_line(stderr, f"error: cannot write {failing}: No space left on device [ENOSPC]")
    # The staging folder is gone (its space given back), and keep_checkpoints=1 deleted nothing:
    # no newer checkpoint was published.
    assert _checkpoints(run) == ["step-2"]

    assert finetune.cli(argv) == 0  # resume=auto, from step-2
    assert _checkpoints(run) == ["step-6"]
    expected = load_file(straight[0] / "checkpoints" / "step-6" / "adapter.safetensors")
    assert _max_difference(load_file(run / "checkpoints" / "step-6" / "adapter.safetensors"), expected) < 1e-6


def test_a_file_size_limit_during_the_export_ends_in_one_line_and_the_checkpoint_exports_later(
        config, straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_export = finetune.export_merged
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def export_under_a_file_size_limit(*args, **kwargs):
        # Past 16 KiB every write fails in the kernel with EFBIG (the merged weights are larger):
        # safetensors and torch raise their own error types, not OSError.
        previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
        try:
            return real_export(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous_handler)

    monkeypatch.setattr(finetune, "export_merged", export_under_a_file_size_limit)
    code, stderr = _cli(["--config", str(config), f"output_dir={run}"], capsys)
    assert code == 2
    _assert_one_error_line(stderr, f"error: cannot write {run / 'export'}: File too large [EFBIG]")
    assert sorted(path.name for path in run.iterdir() if "export" in path.name) == []  # no export, no staging left
    assert _checkpoints(run) == ["step-6"]

    assert export_main([str(run / "checkpoints" / "step-6"), "--out", str(run / "export")]) == 0
    merged, expected = load_file(run / "export" / "model.safetensors"), load_file(straight[0] / "export" / "model.safetensors")
    assert _max_difference(merged, expected) < 1e-6


def test_a_read_only_checkpoint_folder_ends_in_one_line_and_keeps_the_previous_checkpoint(config, tmp_path,
                                                                                        monkeypatch, capsys):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    real_save, real_mkdir = Checkpointer.save, os.mkdir

    def mkdir_on_a_read_only_filesystem(path, *args, **kwargs):
        if Path(path).parent == checkpoints:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def save_then_make_read_only(self, step):
        saved = real_save(self, step)
        if os.geteuid() == 0:  # root writes through chmod; a read-only mount refuses even root
            monkeypatch.setattr(os, "mkdir", mkdir_on_a_read_only_filesystem)
        else:
            checkpoints.chmod(0o555)
        return saved

    monkeypatch.setattr(Checkpointer, "save", save_then_make_read_only)
    try:
        code, stderr = _cli(["--config", str(config), f"output_dir={run}", "train.save_every=2"], capsys)
    finally:
        checkpoints.chmod(0o755)
    assert code == 2
    reason = "Read-only file system [EROFS]" if os.geteuid() == 0 else "Permission denied [EACCES]"
    _assert_one_error_line(stderr, f"error: cannot write {checkpoints / '.step-4.partial'}: {reason}")
    assert _checkpoints(run) == ["step-2"]
    assert sorted(path.name for path in (checkpoints / "step-2").iterdir()) == [
        "accelerate", "adapter.safetensors", "config.yaml", "export_spec.json", "state.json"]
