"""Shell cheat sheets: a comment saying what to do -> the command that does it, from the ``cheat==2.5.1`` sdist.

Each sheet (``cheat/cheatsheets/<tool>``) is mostly blocks of ``# comment`` lines followed
by command lines; free-form sheets give no pairs. The split unit is the sheet, and the
hard negative is another command of the same sheet (``tar -czvf`` against ``tar -xzvf``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import pip_archive, read_matching_members
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.split import Split, split_of
from data.sources.text import truncate_keeping_lines, truncate_words

PACKAGE, VERSION = "cheat", "2.5.1"
LICENSE = "GPL-3.0 (the licence cheat 2.5.1 declares; its sdist also ships an MIT licence text)"
SOURCE = f"PyPI sdist {PACKAGE}=={VERSION}, cheat/cheatsheets/*"
_SHEET = re.compile(rf"{PACKAGE}-{VERSION}/cheat/cheatsheets/([^/.][^/]*)")


def comment_command_pairs(sheet: str) -> Iterator[tuple[str, str]]:
    """``(comment, command)`` of each block of ``#`` lines followed by command lines.

    A block ends at a blank line or at the next comment; the comment's lines are joined
    and a trailing colon dropped, the command keeps its lines. Commands without a
    comment and comments without a command give nothing.
    """
    comment: list[str] = []
    command: list[str] = []
    for line in [*sheet.splitlines(), ""]:
        if line.startswith("#") and command:  # a new block right after a command
            yield _pair(comment, command)
            comment, command = [], []
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif line.strip() and comment:
            command.append(line.rstrip())
        elif not line.strip():
            if comment and command:
                yield _pair(comment, command)
            comment, command = [], []


def _pair(comment: list[str], command: list[str]) -> tuple[str, str]:
    return " ".join(" ".join(comment).split()).rstrip(":").rstrip(), "\n".join(command)


@cache
def load_sheets() -> dict[str, str]:
    """Sheet name -> its text."""
    members = read_matching_members(pip_archive(PACKAGE, VERSION), _SHEET)
    return {_SHEET.fullmatch(name).group(1): raw.decode("utf-8") for name, raw in sorted(members.items())}


def comment_to_command_examples(split: Split, instruction: str) -> list[TrainingExample]:
    """``"<sheet>: <comment>"`` -> the command; hard negative: another command of the same sheet."""
    pairs = (
        GroupedPair(truncate_words(f"{sheet}: {comment}"), truncate_keeping_lines(command), sheet)
        for sheet, text in load_sheets().items()
        if split_of("cheat", sheet) == split
        for comment, command in comment_command_pairs(text)
        if comment
    )
    return grouped_examples(pairs, instruction, "cheat-comment-command")
