"""The error types of bad input, and how a command line ends on one.

Every error a user causes with a data file, a config key or a command-line argument
derives from :class:`BadInputError`, and its message names the file and line, the key or
the argument. Command-line entry points print exactly these as one line and exit with
code 2 (:func:`command_status`); any other exception is a bug and keeps its traceback. Two
failures that are no bug either end the same way: a save the storage refused
(:class:`StorageError`) and a run stopped by a non-finite loss (:class:`NonFiniteError`).
"""

from __future__ import annotations

import reprlib
import sys
import warnings
from collections.abc import Callable


class BadInputError(ValueError):
    """Bad input from the user (a data file, a config key, an argument); the message names where."""


class UsageError(BadInputError):
    """A bad command-line argument or option value."""


class DataFormatError(BadInputError):
    """A malformed data file; the message names the file and, where there is one, the line."""


class StorageError(BadInputError):
    """A save the storage refused (no space, over quota, read-only, not permitted); the message names the path.

    Not the user's input, but the user's to fix and not a bug, so it ends a command the same
    way: one line, exit code 2. What was published before the failed save stays intact.
    """


class NonFiniteError(BadInputError):
    """Training met a NaN or infinite loss, gradient or weight; the message names the step and batch, or the weight.

    Usually the data (a row) or the hyperparameters (a learning rate too high) cause it,
    so it ends a command in one line, exit code 2.
    """
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80


def shown(value: object) -> str:
    """``repr(value)`` cut to a readable length, for quoting a bad value in a one-line message
    (a 1 MB string given where a name belongs must not become a 1 MB error line)."""
    return _SHOWN.repr(value)


def command_status(body: Callable[[], object]) -> int:
    """Run a command line's ``body`` and return its exit status: 0, or 2 after printing a
    :class:`BadInputError` as the one line ``error: <message>`` on stderr.

    Any other exception propagates with its traceback: it is a bug, not the user's input.
    Warnings (a deprecated key) print as one line ``warning: <message>`` too.
    """
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        body()
    except BadInputError as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


def _one_line(message: str, limit: int = 2000) -> str:
    """``message`` on one line (line breaks become spaces), its middle cut when longer than
    ``limit``: the start names where, the end what is expected."""
    message = " ".join(message.splitlines())
    if len(message) <= limit:
        return message
    return f"{message[: limit // 2]} [... {len(message) - limit} characters ...] {message[-limit // 2 :]}"
