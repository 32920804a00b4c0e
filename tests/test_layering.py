"""The library's layering, from its own import statements: `pixart` never imports `stages` or `flows`
(they are entry points over it), and its modules import each other without a circle."""

import ast
from pathlib import Path

from tests.conftest import REPO

PIXART = REPO / "pixart"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """What ``path`` imports at module level, ``if TYPE_CHECKING:`` blocks included (a type-only
    circle is still two modules that need each other): the modules named, and for ``from X import Y``
    also X.Y (Y may be a module). An import inside a function is a deliberate late edge, left out."""
    tree = ast.parse(path.read_text())
    names = set()
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    body = [*tree.body, *(n for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                          for n in node.body)]
    for node in body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PIXART.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_pixart_imports_neither_stages_nor_flows():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.split(".")[0] in {"stages", "flows"})
                 for p in PIXART.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_pixart_modules_import_each_other_without_a_circle():
    graph, done, path = _graph(), set(), []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
