"""echo_base.atomic: a folder appears complete or not at all, and replacing one never loses both."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_base import atomic_folder, publish_folder, staging_folder, staging_path


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
