"""Command-line pieces the evaluation entry points share: comma-separated lists and renamed flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from echo_base import UsageError


def parse_list(value: str | None, flag: str) -> list[str] | None:
    """Items of a comma-separated flag value (None stays None); raises UsageError when empty."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{flag} is empty")
    return items


class _DeprecatedSpelling(argparse.Action):
    """Stores like the flag it was renamed to, after one warning line on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, flag: str, old_flag: str, **kwargs: Any) -> None:
    """Add ``flag`` (``kwargs`` as for ``add_argument``) and its old spelling ``old_flag``.

    The old spelling stays accepted for one release: it stores into the same value and
    prints ``warning: <old_flag> is deprecated; use <flag>``; ``--help`` shows only ``flag``.
    """
    action = parser.add_argument(flag, **kwargs)
    # SUPPRESS as the default: the new flag's default is the one that stands when neither is given.
    parser.add_argument(old_flag, dest=action.dest, action=_DeprecatedSpelling, new_flag=flag,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
