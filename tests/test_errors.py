"""echo_base.errors: bad input ends a command in one line with exit status 2; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from echo_base import DataFormatError, command_status, shown


def _raise(error: Exception):
    def body() -> None:
        raise error

    return body


def test_bad_input_is_one_line_on_stderr_and_status_2(capsys):
    assert command_status(lambda: None) == 0
    assert command_status(_raise(DataFormatError("a.jsonl:3: bad\nrow"))) == 2
    assert capsys.readouterr().err == "error: a.jsonl:3: bad row\n"
    # A message too long to read is cut in its middle: where it happened and what was expected stay.
    assert command_status(_raise(DataFormatError("a.jsonl:3: " + "x" * 10_000 + " expected y"))) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: a.jsonl:3: xxx") and line.endswith("xxx expected y\n") and len(line) < 2100
    assert "[... 8022 characters ...]" in line


def test_a_bug_propagates_with_its_traceback():
    with pytest.raises(ValueError, match="a bug"):
        command_status(_raise(ValueError("a bug")))


def test_shown_cuts_long_values():
    assert shown("short") == "'short'"
    assert len(shown("x" * 1_000_000)) <= 80 and shown("x" * 1_000_000).startswith("'xxx")
