"""The dependency rule of the packages: libjax imports nothing from models, and no module of
libjax or models imports itself through others (read with ``ast``, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("libjax", "models")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The project modules that ``name`` imports (``from a import b`` counts ``a``, whose
    ``__init__`` runs first, and ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_libjax_imports_nothing_from_models():
    edges = graph()
    wrong = sorted(f"{m} -> {t}" for m, ts in edges.items() if m.startswith("libjax")
                   for t in ts if t.startswith("models"))
    assert not wrong


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checker_sees_imports_and_cycles():
    edges = graph()
    assert "libjax.model" in edges["models.common.transformer"]
    assert "libjax.forms" in edges["libjax.model"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_moved_modules_import_under_their_old_names_with_a_warning():
    import importlib
    import warnings

    from libjax import moved
    from libjax.pipeline import BuildConfig
    from libjax.storage import graph as storage_graph

    for old, new in [("libjax.graph", "libjax.storage.graph"), ("libjax.build", "libjax.pipeline"),
                     ("libjax.build.config", "libjax.pipeline.config"),
                     ("libjax.build.pipeline", "libjax.pipeline.run")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   for w in caught), old
    from libjax.build import BuildConfig as OldConfig  # the old spelling, on purpose
    from libjax.graph import Graph
    assert OldConfig is BuildConfig and Graph is storage_graph.Graph
    every_new = set(moved.MODULES.values()) | set(moved.PACKAGES.values())
    assert every_new <= set(modules()), "an alias points at a module that does not exist"
    assert moved.new_name("libjax.pipeline") is None
