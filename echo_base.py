"""The bottom layer: what data, models, train and evaluation all stand on, and none owns.

* Where derived files are cached. Everything this project derives from downloaded
  packages (converted model folders, prepared training mixes, evaluation tasks,
  downloaded archives) lives under one root, so a user can move or wipe it in one
  place. ``ECHO_CACHE`` overrides the default ``~/.cache/echo-embeddings``.
* The error type of bad input. Every error a user causes with a file, a config key or a
  command-line argument derives from :class:`BadInputError`; command-line entry points
  print those as one line and exit with code 2. Any other exception is a bug and keeps
  its traceback.

It imports nothing from the project, so every layer can import it.
"""

from __future__ import annotations

import os
from pathlib import Path


class BadInputError(ValueError):
    """Bad input from the user (a data file, a config key, an argument); the message names where."""


class UsageError(BadInputError):
    """A bad command-line argument or option value."""


def cache_dir(*parts: str) -> Path:
    """Return ``<cache root>/<parts...>``, creating it if needed."""
    root = Path(os.environ.get("ECHO_CACHE", Path.home() / ".cache" / "echo-embeddings"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
