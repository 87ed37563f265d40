"""Docstring -> function code pairs from the Python standard library of the running interpreter.

The split unit is the module, so the hard negative (another function of the same module)
lies in the same split as its query. Contents follow the local Python version, which
:mod:`data.prepare` records in the manifest.
"""

from __future__ import annotations

import ast
import random
import sys
import sysconfig
from pathlib import Path

from data.formats import TrainingExample
from data.sources.split import Split, split_of
from data.sources.text import truncate_keeping_lines, truncate_words

LICENSE = "Python Software Foundation License (CPython standard library)"
SOURCE = f"Python {sys.version_info.major}.{sys.version_info.minor} standard library at {sysconfig.get_paths()['stdlib']}"
# Tests, demos, the IDE and vendored copies are not documented library code.
_SKIPPED_DIRS = {"test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages", "lib2to3", "ensurepip", "__pycache__"}
MIN_DOCSTRING_WORDS = 5


def _module_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIPPED_DIRS & set(p.relative_to(root).parts[:-1]))


def documented_functions(split: Split) -> dict[str, list[tuple[str, str]]]:
    """Module path -> ``(docstring summary, code without docstring)`` of its documented functions.

    The summary is the docstring's first paragraph; functions whose summary has fewer
    than :data:`MIN_DOCSTRING_WORDS` words or no code besides the signature are left out,
    as are files that do not parse.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    functions: dict[str, list[tuple[str, str]]] = {}
    for path in _module_files():
        module = str(path.relative_to(root))
        if split_of("python-stdlib", module) != split:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately invalid or in other encodings
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node)
            if not docstring:
                continue
            summary = docstring.split("\n\n")[0]
            if len(summary.split()) < MIN_DOCSTRING_WORDS:
                continue
            code = _code_without_docstring(node, lines)
            if code.count("\n") < 1:
                continue  # a signature alone (the body was only the docstring) describes nothing
            functions.setdefault(module, []).append((truncate_words(summary), code))
    return functions


def _code_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str:
    docstring_node = node.body[0]
    start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    kept = lines[start : docstring_node.lineno - 1] + lines[docstring_node.end_lineno : node.end_lineno]
    # Dedent methods so code from classes and top level looks alike.
    indent = len(kept[0]) - len(kept[0].lstrip())
    return truncate_keeping_lines("\n".join(line[indent:] for line in kept if line.strip()))


def docstring_to_code_examples(split: Split, instruction: str) -> list[TrainingExample]:
    """Docstring summary -> the function's code; hard negative: another function of its module.

    Duplicate summaries (overloads, copied helpers) keep their first occurrence; modules
    with a single documented function give no rows.
    """
    examples = []
    seen_summaries: set[str] = set()
    for module, functions in documented_functions(split).items():
        rng = random.Random(module)
        for index, (summary, code) in enumerate(functions):
            others = [other_code for other_index, (_, other_code) in enumerate(functions) if other_index != index and other_code != code]
            if not others or summary in seen_summaries:
                continue
            seen_summaries.add(summary)
            examples.append(
                TrainingExample(summary, code, (rng.choice(others),), instruction, "python-docstring-code")
            )
    return examples
