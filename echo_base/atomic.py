"""The one way a folder or a file is written: it appears complete, or not at all.

A folder (a checkpoint, an export, a converted model, a prepared data set, a download)
is built in a hidden sibling staging folder and renamed into place once complete, so a
crash at any moment leaves either the previous folder or the new one, never a
half-written folder under the final name. Staging folders start with a dot, so nothing
that lists finished folders (checkpoint discovery, caches) ever sees one.

:func:`atomic_folder` is the usual form. A multi-process writer (a checkpoint, written
by every rank) uses the parts: :func:`staging_folder` on one process (the others know
its :func:`staging_path`), then every process writes, then :func:`publish_folder` on the first.
A single file (embeddings, a report) is written the same way with :func:`atomic_file`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_path(target: Path) -> Path:
    """Where ``target`` is built: a hidden sibling."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def staging_folder(target: Path) -> Path:
    """A fresh, empty :func:`staging_path` of ``target`` (a stale one is removed)."""
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_folder(staging: Path, target: Path) -> Path:
    """Move the complete ``staging`` folder into place as ``target``, replacing any old ``target``.

    The old folder is first renamed aside, then the new one renamed in, then the old one
    removed: at every moment one of them exists on disk.
    """
    target = Path(target)
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    Path(staging).rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a staging folder to write ``target``'s contents into; publish it when the block succeeds.

    If the block raises, the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    staging = staging_folder(target)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, target)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a staging path to write ``target`` to; move the file into place when the block succeeds.

    The staging file is ``target``'s hidden sibling :func:`staging_path`: in the same folder,
    so the final ``os.replace`` is one rename, which replaces any old ``target`` atomically.
    If the block raises, the staging file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    staging = staging_path(target)
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)  # after a failure; once replaced, there is nothing left to remove
