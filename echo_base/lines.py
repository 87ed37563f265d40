"""Reading the user's text files (plain text, JSONL, YAML), with errors that name the file and line.

Both data files (training examples, task folders) and the encode command's input are read
here, so every reader handles the same real-world files alike: a UTF-8 byte-order mark
(Windows editors write one) is not part of the first line, CRLF ends are ends, invalid
UTF-8 names its line, and a missing file or a folder is one clear error. Lines split on
``\\n`` only (``str.splitlines`` would also split inside a text at a form feed or U+2028).
Files are streamed, so a large training file is never held twice. A key given twice in one
JSON row or one YAML mapping is an error naming its line: both parsers would silently keep
the last value.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from echo_base.errors import BadInputError, DataFormatError


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for every line of a UTF-8 file, without its line end.

    Raises BadInputError naming the file when it cannot be opened, and DataFormatError
    ``<file>:<line>`` for a line that is not valid UTF-8.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not a file") from None
    except OSError as error:
        raise BadInputError(f"{path}: cannot read ({error.strerror})") from None
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(f"{path}:{line_number}: not valid UTF-8 ({error.reason})") from None
            yield line_number, line.removesuffix("\n").removesuffix("\r")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, row)`` for every non-blank line of a JSONL file of objects.

    Raises DataFormatError ``<file>:<line>: <problem>`` on invalid JSON or a non-object row
    (and what :func:`iter_lines` raises).
    """
    for line_number, line in iter_lines(path):
        if not line.strip():
            continue  # blank lines (a trailing newline, a hand-edited file) carry no row
        try:
            row = json.loads(line, object_pairs_hook=_object_without_duplicate_keys)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
        except _DuplicateKey as error:
            raise DataFormatError(f"{path}:{line_number}: key {error.key!r} given twice") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{line_number}: row must be a JSON object, got {type(row).__name__}")
        yield line_number, row


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int | None = None) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = {}
    for key, value in pairs:
        if key in row:
            raise _DuplicateKey(key)
        row[key] = value
    return row


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping raises :class:`_DuplicateKey`."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a `<<:` merge may repeat keys by design
            key = self.construct_object(key_node, deep=True)
            if key in seen:  # a list, not a set: an unhashable key is left to the loader's own error
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.append(key)
        return super().construct_mapping(node, deep)
def read_text_records(path: str | Path) -> list[dict[str, Any]]:
    """The texts of a .txt file (one a line) or a .jsonl file (a ``text`` field a row) as ``{"text"}`` records,
    plus ``"id"`` where a row has one, in file order.

    Raises BadInputError naming the file, and the line where there is one, when the file
    cannot be read, is not UTF-8, has an empty line (.txt) or a bad row (.jsonl), or holds
    no text.
    """
    records = []
    if Path(path).suffix == ".txt":
        for line_number, line in iter_lines(path):
            # Every line is one text (one output row), so an empty line is a missing text, not a separator.
            if not line.strip():
                raise BadInputError(f"{path}:{line_number}: empty line (every line is one text)")
            records.append({"text": line})
    else:
        for line_number, row in iter_jsonl(path):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise BadInputError(f"{path}:{line_number}: 'text' must be a non-empty string")
            records.append({"id": row["id"], "text": text} if "id" in row else {"text": text})
    if not records:
        raise BadInputError(f"{path}: no texts")
    return records


def read_yaml_mapping(path: str | Path, what: str, error: type[BadInputError] = BadInputError) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file holds an empty one); ``what`` names the file's role.

    A UTF-8 BOM and CRLF line ends are read as in :func:`iter_lines`. Raises ``error`` naming
    the file when it cannot be read or holds something other than a mapping, and
    ``<file>:<line>`` when it is not valid UTF-8 or YAML, or gives a key twice in one mapping.
    """
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as problem:
        raise error(f"{path}: cannot read {what} ({problem.strerror})") from None
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except UnicodeDecodeError as problem:
        line = data.count(b"\n", 0, problem.start) + 1
        raise error(f"{path}:{line}: not valid UTF-8 ({problem.reason})") from None
    except yaml.MarkedYAMLError as problem:
        mark = problem.problem_mark or problem.context_mark
        raise error(f"{path}:{mark.line + 1}: not valid YAML ({problem.problem or problem.context})") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({str(problem).splitlines()[0]})") from None
    except _DuplicateKey as problem:
        raise error(f"{path}:{problem.line}: key {problem.key!r} given twice") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} is a mapping, got {type(raw).__name__}")
    return raw
