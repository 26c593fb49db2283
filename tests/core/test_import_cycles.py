"""No import circle among the kit's modules: read every ``import`` of ``src/idvid`` (ast) and look for a cycle.

An edge A -> B means that running A may import B: every ``import`` / ``from ... import`` counts,
at module level or inside a function (a lazy import still closes a circle), except those under
``if TYPE_CHECKING:``. Importing ``idvid.x.y`` also runs ``idvid.x``'s ``__init__``, so that is an
edge too, unless the importer is itself inside ``idvid.x`` (Python has then started that package).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def kit_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "idvid").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names ``module`` imports: ``import a.b`` -> a.b; ``from a import b`` -> a.b (when a module) or a."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def import_graph() -> dict[str, set[str]]:
    modules = kit_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for name in imported_names(module, path):
            if name not in modules or name == module:
                continue
            graph[module].add(name)
            parts = name.split(".")
            for depth in range(1, len(parts)):  # the packages whose __init__ the import runs
                package = ".".join(parts[:depth])
                if package in modules and not (module == package or module.startswith(package + ".")):
                    graph[module].add(package)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_lazy_imports_and_package_inits():
    graph = import_graph()
    assert "idvid.verbs.fit" in graph["idvid.cli"]  # imported inside a function
    assert "idvid.faces" in graph["idvid.verbs.sample"]
    assert "idvid.data" in graph["idvid.preprocess.pipeline"]  # importing idvid.data.manifest runs idvid.data
    assert "idvid.faces" not in graph["idvid.faces.reference"]  # a package's own modules do not re-run it


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_idvid_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_registry_imports_no_plugin():
    # Registering is storage only: the core's own plugins come in through its entry point.
    assert import_graph()["idvid.registry"] <= {"idvid.errors"}
