"""One run per output folder: the lock a live run holds, and a dead one does not.

A run holds ``<output_dir>/run.lock`` from the moment it first writes there to its end: an
``flock`` on the open file, which the kernel releases when the process ends in any way
(SIGKILL and preemption included), so a dead run never holds a folder and a stale file
blocks nothing. The file records the holder (pid, host, start time) for the message a
second run gets. Only the main process of a multi-process run takes it: the other ranks
write only inside the folder it holds.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from echo_base import UsageError

LOCK_FILE = "run.lock"
# flock is missing on some network filesystems (Lustre without -o flock, some FUSE mounts).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
# Lock files this process holds, by resolved path, with the open descriptor that holds each.
_held: dict[Path, int] = {}


class RunFolderBusyError(UsageError):
    """Another live run holds the output folder."""


def check_run_folder(output_dir: Path) -> None:
    """Raise UsageError unless ``output_dir`` can be this run's folder: not a file, and not held
    by another live run (RunFolderBusyError naming its pid, host and start). Writes nothing."""
    output_dir = Path(output_dir)
    existing = next((path for path in (output_dir, *output_dir.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"output_dir: {existing} is a file, not a folder")
    path = output_dir / LOCK_FILE
    if not path.is_file() or path.resolve() in _held:
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if not _try_lock(descriptor, fcntl.LOCK_SH):  # closing the descriptor releases a lock it took
            raise _busy(output_dir, descriptor)
    finally:
        os.close(descriptor)


def lock_run_folder(output_dir: Path) -> None:
    """Create ``output_dir`` and hold its lock until :func:`release_run_folder` or the end of this process.

    Raises RunFolderBusyError naming the holder when another live process holds it. A lock
    this process holds already (an earlier run in it stopped by an exception) is kept.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    if path.resolve() in _held:
        return
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(descriptor, fcntl.LOCK_EX):
            error = _busy(output_dir, descriptor)
            os.close(descriptor)
            raise error
        # The holder may have released and removed the file between our open and our lock:
        # then we hold a file no one else will open, and must lock the new one instead.
        if path.exists() and os.path.samestat(os.fstat(descriptor), os.stat(path)):
            break
        os.close(descriptor)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(owner) + "\n").encode(), 0)
    _held[path.resolve()] = descriptor


def release_run_folder(output_dir: Path) -> None:
    """Remove and release ``output_dir``'s lock if this process holds it (a no-op otherwise)."""
    path = Path(output_dir) / LOCK_FILE
    descriptor = _held.pop(path.resolve(), None)
    if descriptor is None:
        return
    path.unlink(missing_ok=True)  # while still locked, so no one takes the old file
    os.close(descriptor)


def _try_lock(descriptor: int, mode: int) -> bool:
    """Whether a non-blocking ``flock`` of ``mode`` succeeded; True on a filesystem without locks (warned)."""
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        warnings.warn(f"output_dir's filesystem has no file locks ({error.strerror}): a second run on it is not refused",
                      RuntimeWarning, stacklevel=3)
    return True


def _busy(output_dir: Path, descriptor: int) -> RunFolderBusyError:
    try:
        owner = json.loads(os.pread(descriptor, 4096, 0))
        holder = f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written its record yet
        holder = "a process that is starting"
    return RunFolderBusyError(f"output_dir {output_dir} is in use by another run ({holder}; lock file "
                              f"{output_dir / LOCK_FILE}); wait for it to end, or choose another output_dir")
