"""The one way a folder or a file is written: it appears complete, or not at all, and stays so.

A folder (a checkpoint, an export, a converted model, a prepared data set, a download)
is built in a hidden sibling staging folder and renamed into place once complete, so a
crash at any moment leaves either the previous folder or the new one, never a
half-written folder under the final name. Staging folders start with a dot, so nothing
that lists finished folders (checkpoint discovery, caches) ever sees one.

Durable: before a folder is published, every file and folder in it is fsynced, and after
the rename so is the folder that holds it. Without that, a power loss shortly after
publishing can leave a complete-looking folder of empty files: the filesystem may write
the rename to disk before the data of the files it names.

Replacing an existing folder: on Linux the complete staging folder and the old folder
swap names in one ``renameat2(RENAME_EXCHANGE)`` system call (glibc 2.28 or later, a
filesystem that supports it), so the final name holds a complete folder at every moment;
the old folder, now under the staging name, is then removed. Elsewhere the old folder is
first renamed aside to ``.NAME.old``: a crash between the two renames leaves no folder
under the final name, and :func:`recover_folder`, which the readers of published folders
call, renames ``.NAME.old`` back.

:func:`atomic_folder` is the usual form. A multi-process writer (a checkpoint, written
by every rank) uses the parts: :func:`staging_folder` on one process (the others know
its :func:`staging_path`), then every process writes, then :func:`publish_folder` on the first.
A single file (embeddings, a report) is written the same way with :func:`atomic_file`.

A write that fails because of the storage (full, over quota, read-only, not permitted)
raises :class:`~echo_base.errors.StorageError` naming the path (:func:`storage_errors`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from echo_base.errors import BadInputError, StorageError

# errno values that say the storage refused a write, not that the program is wrong.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
# A failed write by a library that raises its own error type (torch.save's RuntimeError) is
# diagnosed by writing this many bytes beside the target: enough to reach the disk's blocks.
_PROBE_BYTES = 64 * 1024
_AT_FDCWD = -100  # from <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # from <linux/fs.h>


def staging_path(target: Path) -> Path:
    """Where ``target`` is built: a hidden sibling."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def retired_path(target: Path) -> Path:
    """Where an old ``target`` waits while a new one is renamed in, where the names cannot be swapped."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def staging_folder(target: Path) -> Path:
    """A fresh, empty :func:`staging_path` of ``target`` (a stale one is removed)."""
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def recover_folder(target: Path) -> Path:
    """Put back an old ``target`` that a crash left renamed aside (see the module docstring); returns ``target``.

    Readers of published folders call this before they look for ``target``. It renames
    only when ``target`` is missing and its ``.NAME.old`` exists: a complete folder that
    was published before.
    """
    target = Path(target)
    retired = retired_path(target)
    if retired.is_dir() and not target.exists():
        retired.rename(target)
    return target


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``, and ``folder`` itself (the deepest first)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def publish_folder(staging: Path, target: Path) -> Path:
    """Move the complete ``staging`` folder into place as ``target``, durably, replacing any old ``target``.

    At every moment a complete folder exists under ``target`` (or, without
    ``renameat2``, under its :func:`retired_path`, from where :func:`recover_folder` takes it back).
    """
    staging, target = Path(staging), Path(target)
    recover_folder(target)
    fsync_tree(staging)
    if not target.exists():
        staging.rename(target)
    elif _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # the old folder, now under the staging name
    else:
        retired = retired_path(target)
        shutil.rmtree(retired, ignore_errors=True)  # a stale one: ``target`` exists, so it was fully replaced
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    _fsync(target.parent)
    return target


def remove_folder(folder: Path) -> None:
    """Delete a published folder: hidden first by one rename, so a crash mid-delete leaves no partial folder in view."""
    folder = Path(folder)
    hidden = folder.with_name(f".{folder.name}.removing")
    shutil.rmtree(hidden, ignore_errors=True)
    folder.rename(hidden)
    shutil.rmtree(hidden, ignore_errors=True)


@contextmanager
def storage_errors(target: Path) -> Iterator[None]:
    """Turn a write that failed because of the storage into :class:`StorageError` naming the path.

    An ``OSError`` tells by its errno (:data:`STORAGE_ERRNOS`). A library's own error type
    (torch.save raises a ``RuntimeError`` without one) does not, so a small write beside
    ``target`` is tried: if that fails with a storage errno too, the storage is the cause.
    Any other failure propagates unchanged, with its traceback.
    """
    try:
        yield
    except BadInputError:
        raise
    except Exception as error:
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            cause, path = error, error.filename or target
        else:
            cause, path = _probe_write(Path(target)), target
        if cause is None:
            raise
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        raise StorageError(f"cannot write {path}: {cause.strerror} [{name}]") from error


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a staging folder to write ``target``'s contents into; publish it when the block succeeds.

    If the block raises, the staging folder is removed and ``target`` is left as it was.
    Raises StorageError when the storage refuses a write (:func:`storage_errors`).
    """
    target = Path(target)
    with storage_errors(target):
        staging = staging_folder(target)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_folder(staging, target)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a staging path to write ``target`` to; move the file into place, durably, when the block succeeds.

    The staging file is ``target``'s hidden sibling :func:`staging_path`: in the same folder,
    so the final ``os.replace`` is one rename, which replaces any old ``target`` atomically.
    If the block raises, the staging file is removed and ``target`` is left as it was.
    Raises StorageError when the storage refuses a write (:func:`storage_errors`).
    """
    target = Path(target)
    staging = staging_path(target)
    with storage_errors(target):
        try:
            yield staging
            _fsync(staging)
            os.replace(staging, target)
            _fsync(target.parent)
        finally:
            staging.unlink(missing_ok=True)  # after a failure; once replaced, there is nothing left to remove


def _fsync(path: str | Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load_renameat2():
    """glibc's ``renameat2``, or None where there is none (not Linux, glibc < 2.28)."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _exchange(first: Path, second: Path) -> bool:
    """Swap the names of two existing paths in one step; False where the system or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this filesystem or kernel has no exchange
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _probe_write(target: Path) -> OSError | None:
    """The storage error a small write beside ``target`` meets, or None when it succeeds."""
    folder = next((path for path in (target.parent, *target.parent.parents) if path.is_dir()), None)
    if folder is None:
        return None
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            remaining = memoryview(bytes(_PROBE_BYTES))
            while remaining:  # a write near a limit is short first; the next one fails
                remaining = remaining[os.write(descriptor, remaining):]
            os.fsync(descriptor)  # delayed allocation: a full disk may show only here
        finally:
            os.close(descriptor)
    except OSError as error:
        return error if error.errno in STORAGE_ERRNOS else None
    finally:
        with suppress(OSError):
            probe.unlink()
    return None
