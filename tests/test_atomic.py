"""echo_base.atomic: a folder appears complete or not at all, durably, and replacing one never loses both;
saves the storage refuses end in one StorageError naming the path."""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from echo_base import (StorageError, atomic, atomic_file, atomic_folder, publish_folder, remove_folder, staging_folder,
                       staging_path, storage_errors)
from echo_base.atomic import retired_path
from train.checkpoint import checkpoint_dirs


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_failed_build_leaves_the_previous_folder_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "mix"
    with pytest.raises(RuntimeError, match="source broke"):
        with atomic_folder(target) as staging:
            _write(staging, **{"half.jsonl": "{}"})
            raise RuntimeError("source broke")
    assert list(tmp_path.iterdir()) == []

    with atomic_folder(target) as staging:
        _write(staging, **{"manifest.json": "{}"})
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            _write(staging, **{"other.jsonl": "{}"})
            raise RuntimeError("source broke again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]


def test_publishing_replaces_an_existing_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "export"
    with atomic_folder(target) as staging:
        _write(staging, old="1", shared="old")
    with atomic_folder(target) as staging:
        _write(staging, new="2", shared="new")
    assert sorted(p.name for p in target.iterdir()) == ["new", "shared"]
    assert (target / "shared").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_staging_is_hidden_and_a_stale_one_is_cleared(tmp_path: Path) -> None:
    target = tmp_path / "step-3"
    stale = staging_folder(target)
    _write(stale, leftover="x")
    assert stale == staging_path(target) and stale.name.startswith(".")
    fresh = staging_folder(target)  # a crashed writer's leftovers are not carried over
    assert fresh == stale and list(fresh.iterdir()) == []
    _write(fresh, done="y")
    publish_folder(fresh, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]
    assert (target / "done").read_text() == "y"


class SimulatedCrash(BaseException):
    """A process dying at this point: nothing after it runs (BaseException, so no handler swallows it)."""


def _files(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_exchange_swaps_two_folders_in_one_call(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _write(first, x="first")
    _write(second, y="second")
    assert atomic._exchange(first, second) is True  # renameat2(RENAME_EXCHANGE) is there on this Linux
    assert _files(first) == {"y": "second"} and _files(second) == {"x": "first"}


def test_replacing_a_folder_exchanges_it_so_the_name_never_lacks_a_complete_folder(tmp_path, monkeypatch) -> None:
    target = tmp_path / "export"
    with atomic_folder(target) as staging:
        _write(staging, weights="old", card="old")
    renamed, real_rename = [], Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, to: renamed.append((self, to)) or real_rename(self, to))
    seen_at_removal = []
    real_rmtree = atomic.shutil.rmtree

    def rmtree(path, *args, **kwargs):  # what the final name holds when the old folder is removed
        seen_at_removal.append((Path(path), _files(target) if target.exists() else None))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    staging = staging_folder(target)
    _write(staging, weights="new", card="new")
    publish_folder(staging, target)
    assert _files(target) == {"card": "new", "weights": "new"}
    assert renamed == []  # no rename aside: the names were exchanged
    assert seen_at_removal[-1] == (staging, {"card": "new", "weights": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_crash_right_after_the_exchange_leaves_the_new_folder_and_a_hidden_leftover(tmp_path, monkeypatch) -> None:
    target = tmp_path / "step-4"
    with atomic_folder(target) as staging:
        _write(staging, state="old")
    staging = staging_folder(target)
    _write(staging, state="new")

    def crash(*args, **kwargs):
        raise SimulatedCrash

    monkeypatch.setattr(atomic.shutil, "rmtree", crash)
    with pytest.raises(SimulatedCrash):
        publish_folder(staging, target)
    monkeypatch.undo()
    assert _files(target) == {"state": "new"}
    assert staging.name.startswith(".") and _files(staging) == {"state": "old"}  # hidden: no reader sees it
    assert staging_folder(target) == staging and _files(staging) == {}  # the next save clears it


@pytest.mark.parametrize("crash_at_rename", [1, 2])
def test_without_the_exchange_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch, crash_at_rename) -> None:
    """Where renameat2 is missing the old folder is renamed aside first; a crash at either rename
    leaves a complete folder under the final name, or one that recover_folder puts back."""
    target = tmp_path / "checkpoints" / "step-2"
    target.parent.mkdir()
    with atomic_folder(target) as staging:
        _write(staging, state="old")
    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    renames, real_rename = [], Path.rename

    def rename(self, to):
        renames.append(self)
        if len(renames) == crash_at_rename:
            raise SimulatedCrash
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", rename)
    staging = staging_folder(target)
    _write(staging, state="new")
    with pytest.raises(SimulatedCrash):
        publish_folder(staging, target)
    monkeypatch.setattr(Path, "rename", real_rename)
    if crash_at_rename == 1:  # before anything moved
        assert _files(target) == {"state": "old"}
    else:  # the old folder aside, the new one not yet in: the name is empty until a reader recovers it
        assert not target.exists() and _files(retired_path(target)) == {"state": "old"}
        assert checkpoint_dirs(tmp_path) == [target]  # checkpoint discovery recovers it
        assert _files(target) == {"state": "old"} and not retired_path(target).exists()
    publish_folder(staging_folder(target), target)  # the next publish works as usual
    assert _files(target) == {}


def test_every_file_and_folder_is_fsynced_before_the_rename_and_the_parent_after(tmp_path, monkeypatch) -> None:
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "sub").mkdir()
        _write(staging, **{"config.json": "{}", "sub/weights": "w"})
    # Each path is read from the open descriptor, so the staging names show these ran before the rename.
    staging = str(staging_path(target))
    assert sorted(synced[:-1]) == sorted([f"{staging}/sub/weights", f"{staging}/sub", f"{staging}/config.json", staging])
    assert synced.index(f"{staging}/sub/weights") < synced.index(f"{staging}/sub") < synced.index(staging)
    assert synced[-1] == str(tmp_path)  # the folder holding the new name, after the rename

    synced.clear()
    with atomic_file(tmp_path / "vectors.npy") as staging_file:
        staging_file.write_text("v")
    assert synced == [str(staging_file), str(tmp_path)]


def test_a_removed_folder_is_hidden_before_it_is_deleted(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "step-1"
    with atomic_folder(folder) as staging:
        _write(staging, state="1")

    def crash_while_deleting(path, **kwargs):
        if Path(path).exists():  # the deletion proper; a stale leftover is cleared first, and there is none
            raise SimulatedCrash

    monkeypatch.setattr(atomic.shutil, "rmtree", crash_while_deleting)
    with pytest.raises(SimulatedCrash):
        remove_folder(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-1.removing"]  # a crash mid-delete leaves nothing in view


def test_storage_failures_become_one_error_naming_the_path_and_other_failures_stay(tmp_path) -> None:
    target = tmp_path / "export"
    with pytest.raises(StorageError, match=r"cannot write .*/export/model.safetensors: No space left on device \[ENOSPC\]"):
        with storage_errors(target):
            raise OSError(errno.ENOSPC, "No space left on device", str(target / "model.safetensors"))
    with pytest.raises(FileNotFoundError):  # not the storage's doing: a bug keeps its own error
        with storage_errors(target):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(target / "x"))
    with pytest.raises(RuntimeError, match="a library's bug"):  # the probe write succeeds: not the storage
        with storage_errors(target):
            raise RuntimeError("a library's bug")
    assert sorted(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_a_library_error_on_a_file_size_limit_is_diagnosed_by_a_real_write(tmp_path) -> None:
    """torch.save fails with a RuntimeError that carries no errno; a real write beside the
    target, under a real file size limit (RLIMIT_FSIZE), shows the storage is the cause."""
    target = tmp_path / "checkpoints" / "step-4"
    target.parent.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        with pytest.raises(StorageError, match=r"cannot write .*/checkpoints/step-4: File too large \[EFBIG\]"):
            with storage_errors(target):
                torch.save({"weights": torch.zeros(10_000)}, target.parent / "optimizer.bin")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert not any(path.name.startswith(".write-probe") for path in target.parent.iterdir())
