"""echo_base.atomic_file: a file appears complete or not at all, and a failed write keeps the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_base import atomic_file, staging_path


def test_the_file_appears_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "embeddings.npy"
    with atomic_file(target) as staging:
        assert staging == staging_path(target) and staging.parent == tmp_path and staging.name.startswith(".")
        staging.write_text("new")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "embeddings.jsonl"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="encoder broke"):
        with atomic_file(target) as staging:
            staging.write_text("half")
            raise RuntimeError("encoder broke")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.jsonl"]


def test_a_successful_write_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "embeddings.jsonl"
    target.write_text("old and longer")
    with atomic_file(target) as staging:
        staging.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.jsonl"]
