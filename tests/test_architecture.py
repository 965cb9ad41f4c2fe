"""The package's layers, checked: imports flow one way, and no module imports itself round a cycle.

The layers, lowest first (docs/architecture.md draws them)::

    _version <- runtime <- core <- backends, testing <- graph <- models <- bench <- dask <- cli <- the package

Every import counts, those inside functions too: an import inside a function is still a
dependency, only a later one. A module may import its own layer and the layers below it;
``backends`` and ``testing`` share a rank but not each other. Nothing inside the package
imports the package's ``__init__`` (the public face sits on top of everything).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "convengine"

#: Layer of each top-level module or subpackage, lowest first.
LAYERS = {
    "_version": 0,
    "runtime": 1,
    "core": 2,
    "backends": 3,
    "testing": 3,
    "graph": 4,
    "models": 5,
    "bench": 6,
    "dask": 7,
    "cli": 8,
    "__init__": 9,
    "__main__": 9,
    "_moved": 9,
}
#: The package's own top-level files form one layer, the public face.
TOP = {"__init__", "__main__", "_moved"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
                pending.extend(child.orelse)
            else:
                pending.append(child)


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, anywhere in its body; ``convengine`` stands for the ``__init__``."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from pkg import sub" imports the submodule when there is one, else a name of pkg
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        for target in targets:
            if target == "convengine" or target.startswith("convengine."):
                while target not in MODULES and "." in target:
                    target = target.rpartition(".")[0]
                if target != name:
                    found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    assert top in LAYERS, f"convengine.{top} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return top, LAYERS[top]


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 50  # the walk found the package
    for module in MODULES:
        _layer(module)


def test_no_module_imports_upward_or_sideways():
    violations = []
    for module, targets in GRAPH.items():
        top, rank = _layer(module)
        for target in targets:
            target_top, target_rank = _layer(target)
            if target == "convengine" and rank < LAYERS["__init__"]:
                violations.append(f"{module} imports the package __init__")
            elif target_rank > rank or (target_rank == rank and target_top != top and not {top, target_top} <= TOP):
                violations.append(f"{module} ({top}) imports {target} ({target_top})")
    assert not violations, "\n".join(sorted(violations))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("broken, expected", [
    ({"convengine.core.engine": {"convengine.graph.executor"}}, "imports convengine.graph.executor"),
    ({"convengine.runtime.threads": {"convengine"}}, "imports the package __init__"),
])
def test_the_checks_can_fail(monkeypatch, broken, expected):
    """The checks see a violation planted in the graph (so a passing run means something)."""
    patched = {k: set(v) for k, v in GRAPH.items()}
    for module, extra in broken.items():
        patched[module] |= extra
    monkeypatch.setattr(__import__(__name__), "GRAPH", patched, raising=False)
    with pytest.raises(AssertionError, match=expected):
        test_no_module_imports_upward_or_sideways()


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
