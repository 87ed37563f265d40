"""Imports run one way: echo_base < data, models < evaluation < train < train.launchers.

Every project module's imports are read with ``ast`` (function-local imports included,
relative imports resolved, third-party imports ignored), so the layers hold for code that
is never run by a test, and the circles a function-local import hides are found too.
What may import what (README, "How the code is laid out"):

* ``echo_base`` imports nothing of the project (but itself, if it is a package);
* ``data`` and ``models`` stand side by side: each imports only ``echo_base`` and itself, with
  one exception: ``data.mine``, the mining CLI, which nothing imports, loads the encoder that
  ranks the candidates (``models.encoder``, ``models.pooling``); the mining itself
  (``data.hard_negatives``) takes an encode callable and imports no model;
* ``evaluation`` never imports ``train``, with one exception: ``evaluation.bench``, the
  benchmark CLI, which nothing imports, may plan runs (``train.cost_model``);
* ``train.launchers`` (sweeps, profiled training steps) launches training, so nothing below
  it imports it;
* no import cycles among the project's modules.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's top-level names; echo_base may be one module (echo_base.py) or a package.
TOP_LEVEL = ("echo_base", "data", "models", "train", "evaluation")


@dataclass(frozen=True)
class Import:
    """One import statement of a project module that names a project module."""

    importer: str  # dotted name of the module holding the statement
    imported: str  # the project module it imports (resolved, absolute)
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} ({_path_of(self.importer)}:{self.line})"


def _path_of(module: str) -> str:
    path = ROOT / Path(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project (packages by their ``__init__.py``)."""
    modules = {}
    for name in TOP_LEVEL:
        files = sorted((ROOT / name).rglob("*.py")) if (ROOT / name).is_dir() else [ROOT / f"{name}.py"]
        for path in files:
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that importing ``name`` names: itself, else its longest existing prefix."""
    parts = name.split(".")
    if parts[0] not in TOP_LEVEL:
        return None  # third-party or standard library
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every project import in ``path``, wherever it sits in the file (module level or inside a function)."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the package holding this module, then one package up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from package import submodule` imports the submodule; `from module import name` the module.
            full_names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            names = [name if name in modules else base for name in full_names]
        else:
            continue
        for name in names:
            imported = _resolve(name, modules)
            if imported is not None and imported != module:
                found.append(Import(module, imported, node.lineno))
    return sorted(set(found), key=lambda item: (item.line, item.imported))


@pytest.fixture(scope="module")
def all_imports() -> list[Import]:
    modules = project_modules()
    return [item for module, path in modules.items() for item in imports_of(module, path, modules)]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# The benchmark CLI compares this project's training entry with sentence-transformers and plans
# runs (--plan), so it alone in evaluation imports train, and only the cost model of it.
BENCH = "evaluation.bench"
BENCH_MAY_IMPORT = ("train.cost_model",)

# The mining CLI ranks candidates with an encoder, so it alone in data imports models, and only these.
MINE = "data.mine"
MINE_MAY_IMPORT = ("models.encoder", "models.pooling")

# (rule, does it apply to this importer, is this import forbidden to it)
RULES: list[tuple[str, Callable[[str], bool], Callable[[str], bool]]] = [
    ("models does not import data", lambda m: _in(m, "models"), lambda i: _in(i, "data")),
    ("data does not import models", lambda m: _in(m, "data") and m != MINE, lambda i: _in(i, "models")),
    (f"{MINE} imports of models are only {', '.join(MINE_MAY_IMPORT)}",
     lambda m: m == MINE, lambda i: _in(i, "models") and i not in MINE_MAY_IMPORT),
    (f"nothing imports {MINE} (a CLI)", lambda m: True, lambda i: i == MINE),
    ("data and models import nothing above them (train, evaluation)",
     lambda m: _in(m, "data") or _in(m, "models"), lambda i: _in(i, "train") or _in(i, "evaluation")),
    ("evaluation does not import train", lambda m: _in(m, "evaluation") and m != BENCH, lambda i: _in(i, "train")),
    (f"{BENCH} imports of train are only {', '.join(BENCH_MAY_IMPORT)}",
     lambda m: m == BENCH, lambda i: _in(i, "train") and i not in BENCH_MAY_IMPORT),
    (f"nothing imports {BENCH} (a CLI)", lambda m: True, lambda i: i == BENCH),
    ("echo_base imports nothing of the project", lambda m: _in(m, "echo_base"), lambda i: not _in(i, "echo_base")),
    ("only train.launchers imports train.launchers",
     lambda m: not _in(m, "train.launchers"), lambda i: _in(i, "train.launchers")),
]


@pytest.mark.parametrize("rule, applies_to, forbidden", RULES, ids=[rule for rule, _, _ in RULES])
def test_imports_run_one_way(all_imports, rule, applies_to, forbidden) -> None:
    offending = [str(item) for item in all_imports if applies_to(item.importer) and forbidden(item.imported)]
    assert not offending, f"{rule}, but:\n  " + "\n  ".join(offending)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of ``graph`` that has one.

    Tarjan's algorithm (iterative) finds the groups; a breadth-first search inside each
    group then gives its shortest cycle through the group's first member.
    """
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    groups.append(sorted(group))
    cycles = []
    for group in groups:
        start, members = group[0], set(group)
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following = []
            for node in frontier:
                for child in sorted(graph.get(node, ())):
                    if child in members and child not in came_from:
                        came_from[child] = node
                        following.append(child)
            frontier = following
        cycle = [start]
        while len(cycle) == 1 or cycle[-1] != start:
            cycle.append(came_from[cycle[-1]])
        cycles.append(cycle[::-1])
    return sorted(cycles)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "x": {"y"}, "y": set(), "p": {"p"}, "q": {"r"}, "r": {"q"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["p", "p"], ["q", "r", "q"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_no_import_cycles(all_imports) -> None:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], Import] = {}
    for item in all_imports:
        graph.setdefault(item.importer, set()).add(item.imported)
        where.setdefault((item.importer, item.imported), item)
    cycles = find_cycles(graph)
    described = [" -> ".join(cycle) + "\n    " + "\n    ".join(str(where[edge]) for edge in zip(cycle, cycle[1:]))
                 for cycle in cycles]
    assert not cycles, "import cycles among the project's modules:\n  " + "\n  ".join(described)


def test_the_import_reader_sees_function_local_and_relative_imports(tmp_path) -> None:
    source = tmp_path / "run.py"
    source.write_text(
        "import os\nimport torch.nn\nfrom .tasks import load\nfrom .. import echo_base\n"
        "def main():\n    from evaluation import toy\n    import train.launchers.sweep as sweep\n"
    )
    modules = {"evaluation": tmp_path, "evaluation.tasks": tmp_path, "evaluation.toy": tmp_path, "echo_base": tmp_path,
               "train": tmp_path, "train.launchers": tmp_path, "train.launchers.sweep": tmp_path,
               "evaluation.run": source}
    found = {(item.imported, item.line) for item in imports_of("evaluation.run", source, modules)}
    assert found == {("evaluation.tasks", 3), ("echo_base", 4), ("evaluation.toy", 6), ("train.launchers.sweep", 7)}


def test_the_rules_flag_imports_against_the_layers() -> None:
    def broken(importer: str, imported: str) -> set[str]:
        return {rule for rule, applies_to, forbidden in RULES if applies_to(importer) and forbidden(imported)}

    assert broken("models.registry", "data.sources.archives") == {"models does not import data"}
    assert broken("data.formats", "models.tokenization") == {"data does not import models"}
    assert broken("evaluation.toy", "train.config") == {"evaluation does not import train"}
    assert broken("echo_base.cache", "data.prepare") == {"echo_base imports nothing of the project"}
    assert broken("train.finetune", "train.launchers.sweep") == {"only train.launchers imports train.launchers"}
    assert broken("train.launchers.sweep", "train.finetune") == broken("evaluation.run", "data.formats") == set()
    assert broken("echo_base", "echo_base.cache") == broken("train.step", "evaluation.metrics") == set()
    # The benchmark CLI's one exception, kept narrow: train's cost model, nothing else of train.
    assert broken("evaluation.bench", "train.cost_model") == set()
    only = {"evaluation.bench imports of train are only train.cost_model"}
    assert broken("evaluation.bench", "train.finetune") == broken("evaluation.bench", "train.config") == only
    assert broken("evaluation.benchmarks.st_train", "train.config") == {"evaluation does not import train"}
    assert broken("evaluation.run", "evaluation.bench") == {"nothing imports evaluation.bench (a CLI)"}
    # The mining CLI's one exception, kept narrow: the encoder and pooling names, nothing else of models.
    assert broken("data.mine", "models.encoder") == broken("data.mine", "models.pooling") == set()
    assert broken("data.mine", "models.export") == {"data.mine imports of models are only models.encoder, models.pooling"}
    assert broken("data.hard_negatives", "models.encoder") == {"data does not import models"}
    assert broken("data.prepare", "data.mine") == {"nothing imports data.mine (a CLI)"}
    assert broken("train.launchers.sweep", "evaluation.bench") == {"nothing imports evaluation.bench (a CLI)"}
