"""The test session writes its cache where conftest says, never into the user's own cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from echo_base import cache_dir
from tests.conftest import ECHO_CACHE_SET_BY_USER, REPO, TEST_CACHE, isolate_cache

USER_CACHE = Path.home() / ".cache" / "echo-embeddings"  # echo_base's default root


def test_isolate_cache_sets_the_test_cache_only_when_none_is_set() -> None:
    unset: dict[str, str] = {}
    assert isolate_cache(unset) == TEST_CACHE == REPO / ".test-cache"
    assert unset == {"ECHO_CACHE": str(TEST_CACHE)}
    chosen = {"ECHO_CACHE": "/somewhere/chosen"}
    assert isolate_cache(chosen) == Path("/somewhere/chosen")
    assert chosen == {"ECHO_CACHE": "/somewhere/chosen"}


def test_this_session_caches_under_echo_cache_and_not_in_the_user_cache() -> None:
    root = Path(os.environ["ECHO_CACHE"]).resolve()
    assert cache_dir().resolve() == root
    assert cache_dir("models").resolve().is_relative_to(root)
    if not ECHO_CACHE_SET_BY_USER:
        assert root == TEST_CACHE.resolve()
        assert not root.is_relative_to(USER_CACHE.resolve())


def test_processes_the_tests_start_see_the_same_cache() -> None:
    # launch.sh runs and other subprocesses inherit the environment, so they cache there too.
    printed = subprocess.run([sys.executable, "-c", "from echo_base import cache_dir; print(cache_dir())"],
                             cwd=REPO, env=dict(os.environ), capture_output=True, text=True, check=True).stdout
    assert Path(printed.strip()).resolve() == Path(os.environ["ECHO_CACHE"]).resolve()
