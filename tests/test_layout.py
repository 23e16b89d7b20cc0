"""The layout docs/design.md describes: no two modules import each other, packages import only the
foundation modules beside them, never a command nor the package root."""

import ast
from pathlib import Path

SEARCH = Path(__file__).resolve().parents[1] / "search"
FOUNDATIONS = {
    "search.errors",
    "search.schema",
    "search.files",
    "search.device",
    "search.version",
    "search.optuna_versions",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SEARCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every search module `path` imports, at the top or inside a function (a lazy import still
    ties the two files)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SEARCH.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_modules_of_search_import_each_other_in_a_circle():
    assert _cycles(_graph()) == []


def test_packages_import_only_foundations_of_the_top_level():
    """A package's module may import other packages and the foundation modules, never a command
    (search.cli, search.run, ...) nor search/__init__.py itself."""
    top = {f"search.{p.stem}" for p in SEARCH.glob("*.py") if p.stem != "__init__"}
    assert FOUNDATIONS <= top | {"search.optuna_versions"}
    wrong = {
        module: sorted(i for i in imports if i == "search" or (i in top and i not in FOUNDATIONS))
        for module, imports in _graph().items()
        if module.count(".") >= 2 or module in {f"search.{p.name}" for p in SEARCH.iterdir() if p.is_dir()}
    }
    assert {m: w for m, w in wrong.items() if w} == {}
