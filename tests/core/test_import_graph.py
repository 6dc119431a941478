"""No import circles inside ``dmz_api/`` or ``plugin/``.

Every module is parsed with ``ast`` (nothing is imported), and each import of a module of
the same package, relative or absolute, at module level or inside a function, becomes an
edge; imports under ``if TYPE_CHECKING:`` do not run and are left out. Importing
``pkg.sub.mod`` also runs ``pkg/__init__.py`` and ``pkg/sub/__init__.py``, so those edges
count too, except to packages that contain the importing module: Python has already
started them before the module's first line, so the import runs nothing new. Naming the
package itself (``from . import name`` where ``name`` is not a submodule) always counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(root: Path, package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` except those guarded by ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _runtime_imports(child)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that importing ``name`` (at ``path``) runs directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base_name = ".".join([*base, *([node.module] if node.module else [])])
        else:
            base_name = node.module or ""
        for alias in node.names:
            submodule = f"{base_name}.{alias.name}"
            targets.add(submodule if submodule in known else base_name)
    edges: set[str] = set()
    own = {*_ancestors(name), name}
    for target in targets:
        if target in known and target != name:
            edges.add(target)
        edges.update(a for a in _ancestors(target) if a in known and a not in own)
    return edges


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    found = modules(root, package)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]`` starting at its first name, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        # Iterative depth-first search; ``path`` is the chain of modules being imported.
        path = [start]
        pending = [iter(sorted(graph[start]))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                done.add(path.pop())
                pending.pop()
            elif nxt in path:
                cycle = path[path.index(nxt) :]
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                return [*cycle, cycle[0]]
            elif nxt not in done:
                path.append(nxt)
                pending.append(iter(sorted(graph[nxt])))
    return None


def test_dmz_api_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(ROOT, "dmz_api"))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_plugin_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(ROOT, "plugin"))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from . import a\nVERSION = 1\n",
        "pkg/a.py": "from .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def late():\n    import pkg.c\n",
        "pkg/c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import x\n"
            "else:\n    from .sub.b import late\n"
        ),
        "pkg/d.py": "from pkg.sub.b import late\nfrom . import a\n",
        "pkg/e.py": "from . import VERSION\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub", "pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},  # inside a function; pkg contains b, so no edge to it
        "pkg.c": {"pkg.sub", "pkg.sub.b"},  # the else branch runs, TYPE_CHECKING does not
        "pkg.d": {"pkg.a", "pkg.sub", "pkg.sub.b"},
        "pkg.e": {"pkg"},  # a name from the package itself
    }
    assert find_cycle(graph) == ["pkg.c", "pkg.sub.b", "pkg.c"]
    (tmp_path / "pkg/c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
    # Reached through the implied edge: pkg.a imports pkg.sub.b, so runs pkg/sub/__init__.py.
    (tmp_path / "pkg/sub/__init__.py").write_text("from .. import d\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.sub", "pkg.d", "pkg.a"]
