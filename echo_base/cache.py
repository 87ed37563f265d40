"""Where derived files are cached.

Everything this project derives from downloaded packages (converted model folders,
prepared training mixes, evaluation tasks, downloaded archives) lives under one root, so
a user can move or wipe it in one place. ``ECHO_CACHE`` overrides the default
``~/.cache/echo-embeddings``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return ``<cache root>/<parts...>``, creating it if needed."""
    root = Path(os.environ.get("ECHO_CACHE", Path.home() / ".cache" / "echo-embeddings"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
