"""What the command lines below evaluation share: argument errors as one line, and checks made before any work.

:class:`ArgumentParser` raises :class:`~echo_base.errors.UsageError` instead of printing the
usage and exiting, so an entry point reports a bad argument like any other bad input (one
line, exit code 2); :func:`positive_int` is an argparse ``type``; :func:`check_output_path`
finds a wrong ``--out`` before a model loads rather than after the work is done.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from echo_base.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """Raises UsageError instead of printing the usage and exiting, so a bad argument ends in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def positive_int(value: str) -> int:
    """An argparse ``type``: an integer >= 1."""
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def check_output_path(out: Path, flag: str = "--out") -> None:
    """Raise UsageError naming ``flag`` unless ``out`` is a file that can be written in an existing folder."""
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {out}: {folder} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out}: folder {folder} is not writable")
    if out.is_dir():
        raise UsageError(f"{flag} {out}: is a folder")
