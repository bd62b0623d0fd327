"""The package's shape, checked: no import circles, imports only downwards through the layers,
and no module over 400 lines.

Every ``import`` counts, at module level or inside a function (a function-level import is
still a dependency; it only defers the cost). The layers, top to bottom::

    cli (and ``python -m backtrack``)
    serving, tuning, rl
    evaluation, terminal, hf
    operators, recipes, configurations
    engine
    models
    backends
    errors, paths, lazy, flags, literals, execution

A module may import its own layer or any layer below it. The package root ``backtrack`` is
the public facade (its lazy ``load_model``), importable from anywhere for ``__version__``.

Inside ``evaluation`` the three jobs go one way too: the modules at its top (problems,
prompts, settings, records) import none of them; ``scoring`` and ``reporting`` import only
those; ``generation`` may also import ``scoring`` (the runner scores what it decodes). So
``backtrack rescore`` never loads the decoding side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "backtrack"
MAX_LINES = 400
# Modules allowed over MAX_LINES, with their ceiling (none today). An entry goes as soon as its
# module fits (a test says so).
OVER_LIMIT: dict[str, int] = {}

LAYERS: dict[str, int] = {
    "errors": 0,
    "paths": 0,
    "lazy": 0,
    "flags": 0,
    "literals": 0,
    "execution": 0,
    "backends": 1,
    "models": 2,
    "engine": 3,
    "operators": 4,
    "recipes": 4,
    "configurations": 4,
    "evaluation": 5,
    "terminal": 5,
    "hf": 5,
    "serving": 6,
    "tuning": 6,
    "rl": 6,
    "cli": 7,
    "__main__": 7,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts ``a.b.c`` when that
    is a module, else ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in known else base for t in targets]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` depends on a.b.c; walk up to the nearest project module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path, set(MODULES)) for name, path in MODULES.items()}


def _closure(start: set[str]) -> set[str]:
    """Every module ``start`` reaches through GRAPH (itself included)."""
    seen, todo = set(start), list(start)
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the facade
    return LAYERS[parts[1]]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_imports_and_circles():
    # A check that cannot fail checks nothing: the graph must hold known edges, and the cycle
    # finder must find a planted circle.
    assert "backtrack.engine.settings" in GRAPH["backtrack.operators.base"]
    assert any(m.startswith("backtrack.backends") for m in GRAPH["backtrack.engine.session"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_top_level_module_has_a_layer():
    tops = {name.split(".")[1] for name in MODULES if name != PACKAGE}
    assert tops <= set(LAYERS), f"no layer for {sorted(tops - set(LAYERS))}"


def test_no_import_circles():
    circles = _cycles(GRAPH)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_imports_flow_downwards():
    upward = [
        f"{source} (layer {_layer(source)}) imports {target} (layer {_layer(target)})"
        for source, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer(source) is not None
        and _layer(target) is not None
        and _layer(target) > _layer(source)
    ]
    assert not upward, "imports against the layers: " + "; ".join(upward)


def _lines(name: str) -> int:
    return MODULES[name].read_text(encoding="utf-8").count("\n")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    limit = OVER_LIMIT.get(name, MAX_LINES)
    assert _lines(name) <= limit, f"{MODULES[name]}: {_lines(name)} lines (at most {limit})"


@pytest.mark.parametrize("name", sorted(OVER_LIMIT))
def test_every_exemption_is_still_needed(name):
    assert name in MODULES, f"{name} is gone: drop it from OVER_LIMIT"
    assert _lines(name) > MAX_LINES, f"{name} fits in {MAX_LINES} lines: drop it from OVER_LIMIT"


EVALUATION = f"{PACKAGE}.evaluation"
# What each part of the evaluation may import from the evaluation ("shared": its top modules).
EVALUATION_JOBS: dict[str, set[str]] = {
    "shared": {"shared"},
    "scoring": {"shared", "scoring"},
    "reporting": {"shared", "reporting"},
    "generation": {"shared", "scoring", "generation"},
}


def _evaluation_part(module: str) -> str | None:
    """``generation``, ``scoring``, ``reporting`` or ``shared`` for a module of the evaluation;
    None for any other module."""
    parts = module.split(".")
    if parts[:2] != [PACKAGE, "evaluation"]:
        return None
    if len(parts) > 2 and parts[2] in EVALUATION_JOBS and parts[2] != "shared":
        return parts[2]
    return "shared"


def test_every_evaluation_module_has_a_part():
    # The parts exist, and a module outside them is shared (a new job needs its entry).
    parts = {_evaluation_part(name) for name in MODULES if name.startswith(EVALUATION + ".")}
    assert parts == set(EVALUATION_JOBS), parts
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name.startswith(EVALUATION + "."):
            assert name.split(".")[2] in EVALUATION_JOBS, f"{name}: a job with no entry"


def test_evaluation_jobs_import_one_way():
    wrong = [
        f"{source} ({_evaluation_part(source)}) imports {target} ({_evaluation_part(target)})"
        for source, targets in sorted(GRAPH.items())
        if _evaluation_part(source) is not None
        for target in sorted(targets)
        if _evaluation_part(target) is not None
        and _evaluation_part(target) not in EVALUATION_JOBS[_evaluation_part(source)]
    ]
    assert not wrong, "imports between the evaluation's jobs: " + "; ".join(wrong)


def _imports_in(statements: list[ast.stmt]) -> set[str]:
    """The project modules the ``import`` statements among ``statements`` name (nested ones
    included)."""
    found: set[str] = set()
    for child in ast.walk(ast.Module(body=statements, type_ignores=[])):
        if isinstance(child, ast.ImportFrom) and child.module:
            targets = [f"{child.module}.{alias.name}" for alias in child.names]
        elif isinstance(child, ast.Import):
            targets = [alias.name for alias in child.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # up to the nearest project module
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def test_rescore_depends_only_on_scoring():
    """``backtrack rescore`` (the command, and the module behind it) reaches only scoring,
    the evaluation's shared modules and the layers below: nothing that decodes."""
    command_module = f"{PACKAGE}.cli.evaluate"
    tree = ast.parse(MODULES[command_module].read_text(encoding="utf-8"))
    function = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "rescore_command"
    )
    # What running it loads: the command module with its top-level imports, then the
    # function's own imports, and everything those reach (any import at all, function-level
    # ones included: an over-approximation, so it is the stricter check).
    top_level = _imports_in([n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)])
    command = _imports_in(function.body)
    # The checker sees what it must: the command's import, and the runner reaching scoring.
    assert f"{EVALUATION}.scoring.rescore" in command
    assert f"{PACKAGE}.cli.options" in top_level
    assert f"{EVALUATION}.scoring.score" in _closure({f"{EVALUATION}.generation.runner"})
    reached = _closure(top_level | command)
    decoding = sorted(
        m
        for m in reached
        if _evaluation_part(m) in ("generation", "reporting")
        or m in (f"{PACKAGE}.engine.session", f"{PACKAGE}.engine.decoder")
    )
    assert not decoding, f"backtrack rescore reaches {decoding}"
