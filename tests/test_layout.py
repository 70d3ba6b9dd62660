"""The house's rules, measured from the code as it is (docs: ../DESIGN layout, issue 23):
no import cycle, lazy imports included; no lower floor importing a higher one; no long
function. ``python -m tests.test_layout`` prints the figures (lines per module, the
largest functions, the import graph's size)."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asyncsnap"

# What may not import what: the floors, from the ground up. A module of the left may import
# none of the right (prefixes of dotted names; "asyncsnap." left out).
FORBIDDEN = {
    # the ground: what everything stands on
    "errors": ("*",),
    "events": ("*",),
    "text": ("*",),
    "version": ("*",),
    "scratch": ("*",),
    "batches": ("*",),
    "regular_files": ("*",),
    # the format's row fingerprint: what the manifest records, below the format
    "fingerprint": ("*",),
    # the format and the stores know nothing of the commands that use them
    "format": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy", "verify"),
    "storage": ("dump", "restore", "analysis", "api", "cli", "jobs", "copy", "verify", "prune"),
    "encode": ("dump", "restore", "analysis", "api", "cli", "jobs", "copy", "verify", "prune"),
    "catalog": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy", "format"),
    "plan": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy"),
    "session": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy"),
    "snapshot": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy"),
    # a replication slot's start and its changes' messages: below the commands that use them
    "slot": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy"),
    "pgoutput": ("*",),
    "changes": ("storage", "dump", "restore", "analysis", "api", "cli", "jobs", "copy", "slot"),
    # a chain's change lines read and replayed: shared by a chain's restore and its diff
    "chainlines": ("dump", "restore", "analysis", "api", "cli", "jobs", "copy", "increment"),
    # a chunk's job runs anywhere: it needs no command above it
    "jobs": ("dump", "restore", "analysis", "api", "cli", "copy", "verify", "prune"),
    "copy": ("dump", "restore", "analysis", "api", "cli"),
    "verify": ("dump", "restore", "analysis", "api", "cli", "prune"),
    # the commands are composed above the library (restore --compare, dump --keep)
    "restore": ("analysis", "dump", "api", "cli", "prune"),
    "analysis": ("restore", "dump", "api", "cli", "prune"),
    "dump": ("restore", "analysis", "api", "cli", "increment"),
    # dump --since: a dump's output, and a slot's changes, composed
    "increment": ("restore", "analysis", "api", "cli"),
}
# The allowed exceptions to a "*": the ground may import only the ground.
GROUND = ("errors", "events", "text", "version", "batches", "regular_files")

# Longer than this is a function to split (a command's option declarations do not count:
# a Typer command's parameters are its interface, one per option).
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    for stub in PACKAGE.rglob("*.pyi"):  # the native module
        if not stub.with_suffix(".py").exists():
            found[".".join(stub.relative_to(PACKAGE.parent).with_suffix("").parts)] = stub
    return found


def imports() -> dict[str, set[str]]:
    """Every import of a package module by another, at any depth of the code (lazy
    imports inside functions included)."""
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        if path.suffix != ".py":
            continue
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package[: len(package) - node.level + 1] + ([base] if base else [])
                    )
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in known else base)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _floor(module: str) -> str:
    return module.removeprefix("asyncsnap.").split(".")[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        forbidden = FORBIDDEN.get(_floor(module), ())
        for target in targets:
            floor = _floor(target)
            if target == "asyncsnap" or floor == _floor(module):
                continue
            if ("*" in forbidden and floor not in GROUND and floor != "_rows") or (
                floor in forbidden
            ):
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def long_functions() -> list[tuple[int, str]]:
    """Functions longer than the limit, counted from the end of their signature (a Typer
    command's options are its signature) and without their docstring."""
    found = []
    for name, path in modules().items():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:] or body
            assert node.end_lineno is not None
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append((lines, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def test_no_import_cycle_lazy_imports_included() -> None:
    assert cycles(imports()) == []


def test_no_floor_imports_one_above_it() -> None:
    assert upward_imports(imports()) == []


def test_no_function_over_the_limit() -> None:
    assert long_functions() == []


def test_the_rules_see_what_they_check() -> None:
    """The measures are not vacuous: they find the package's modules and their imports,
    and they catch a cycle and an upward import when there is one."""
    graph = imports()
    assert len(graph) > 40 and "asyncsnap.format" in graph["asyncsnap.storage.backup"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward_imports({"asyncsnap.storage.store": {"asyncsnap.dump"}}) == [
        "asyncsnap.storage.store -> asyncsnap.dump"
    ]


if __name__ == "__main__":
    graph = imports()
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    edges = sum(map(len, graph.values()))
    print(f"{len(sizes)} modules, {sum(sizes.values())} lines, {edges} imports")
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
    print("largest modules:", *(f"{n} {m}" for m, n in largest), sep="\n  ")
    longest = long_functions()[:10]
    print("longest functions (body lines):", *(f"{n} {f}" for n, f in longest), sep="\n  ")
    print("cycles:", cycles(graph) or "none")
    print("upward imports:", upward_imports(graph) or "none")
    sys.exit(0)
