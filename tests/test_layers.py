"""The packages' layers: no import cycle and no import from a lower layer to a higher one.

Every import counts: at module level, under ``TYPE_CHECKING`` and inside functions. A
layer may import its own modules and any layer below it; the table is the one each
package's ``__init__`` docstring states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fl_ee", "strategies", "partitions", "sims")

# lowest first; a module belongs to the first entry that is it or its package
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fl_ee.core", "sims.devices"),
    ("fl_ee.models",),
    ("fl_ee.data", "partitions"),
    ("fl_ee.learning",),
    ("fl_ee.wire",),
    ("fl_ee.deployment",),
    ("strategies", "sims.clock", "sims.tiers", "sims.traces", "sims.emulator", "sims.asynchrony"),
    ("fl_ee.results",),
    ("fl_ee.federation", "sims.backend", "sims.engine", "sims.stopping", "sims.reaper", "sims"),
    ("fl_ee.studies",),
    ("fl_ee.api",),
    ("fl_ee.cli", "fl_ee"),  # the package itself: the API's names, imported on first use
)


def modules() -> dict[str, Path]:
    """Every module of the four packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the four packages that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {t for t in targets if t in known and t != name}


def layer_of(name: str) -> int:
    """The index of the layer ``name`` belongs to (its longest matching prefix)."""
    best, depth = -1, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and member.count(".") > depth:
                best, depth = index, member.count(".")
    return best


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_every_module_has_a_layer() -> None:
    assert [name for name in GRAPH if layer_of(name) < 0] == []


def test_no_import_runs_up_the_layers() -> None:
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in sorted(GRAPH.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_import_cycle() -> None:
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


@pytest.mark.parametrize("package", sorted(n for n, p in modules().items() if p.name == "__init__.py"))
def test_each_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse(modules()[package].read_text()))
    assert doc, f"{package}/__init__.py has no docstring"


def test_the_checker_sees_what_it_must() -> None:
    # a known downward import and a `from package import module` edge are both found
    assert "fl_ee.core.config" in GRAPH["fl_ee.federation.server"]
    assert "fl_ee.federation.clientstate" in GRAPH["fl_ee.federation.checkpoint"]
    assert "fl_ee.federation.preflight" in GRAPH["fl_ee.studies.sweep"]  # imported inside a function
    assert layer_of("fl_ee.results.rundir") > layer_of("strategies.base") > layer_of("fl_ee.wire.protocol")
