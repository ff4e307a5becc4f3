"""The package's layering, checked from its source.

Every module's imports are read with :mod:`ast`, at module level and inside
functions alike, because a function-level import that dodges a circle at import
time still ties the two modules together for a reader. The test fails on an import
cycle between the package's modules, and on a module of ``core/`` that imports
Django, so the module map in ``docs/how-it-works.md`` stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "django_poolbackend"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, wherever it is; the ones under
    ``if TYPE_CHECKING:`` never run and are left out."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _imported(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """The package modules and the top-level outside packages *module* imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    inside: set[str] = set()
    outside: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import process`` imports the submodule, not only the package.
            names = [
                f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                for alias in node.names
            ]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name != module:
                    inside.add(name)
            else:
                outside.add(name.split(".")[0])
    return inside, outside


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = {}
    third_party: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges[module], third_party[module] = _imported(module, path, known)
    return edges, third_party


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module
    (Tarjan's algorithm), each written as the path that closes it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        members = set(component)
        path = [component[0]]
        while True:
            step = sorted(n for n in edges[path[-1]] if n in members)
            nxt = next((n for n in step if n == path[0]), None) or next(
                (n for n in step if n not in path), step[0]
            )
            path.append(nxt)
            if nxt in path[:-1]:
                break
        cycles.append(path[path.index(path[-1]) :])
    return cycles


def test_the_import_graph_is_acyclic() -> None:
    edges, _ = _graph()
    cycles = _cycles(edges)
    assert cycles == [], "import cycles (function-level imports included): " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_core_imports_nothing_from_django_or_the_layers_above() -> None:
    edges, third_party = _graph()
    core = PACKAGE + ".core"
    for module in edges:
        if module != core and not module.startswith(core + "."):
            continue
        assert "django" not in third_party[module], f"{module} imports Django"
        above = sorted(n for n in edges[module] if n != core and not n.startswith(core + "."))
        assert above == [], f"{module} imports the layers above core: {above}"


def test_the_graph_reader_sees_function_level_and_relative_imports() -> None:
    # The reader itself, on what it must catch: without this a parsing slip could
    # make the acyclic test pass on an empty graph.
    edges, third_party = _graph()
    assert f"{PACKAGE}.core.pool" in edges[f"{PACKAGE}.figures"]
    assert "django" in third_party[f"{PACKAGE}.wrapper"]
    # apps imports checks only inside ready().
    assert f"{PACKAGE}.checks" in edges[f"{PACKAGE}.apps"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_process_does_not_import_what_reads_its_pools() -> None:
    # The process module offers events (retire, exit, fork) and publish
    # subscribes to them; the other direction would tie holding pools to writing
    # snapshots. The figures read the pools, so they import it, not the reverse.
    edges, _ = _graph()
    assert f"{PACKAGE}.publish" not in edges[f"{PACKAGE}.process"]
    assert f"{PACKAGE}.figures" not in edges[f"{PACKAGE}.process"]


def test_nothing_imports_the_mixin_to_ask_whether_a_backend_is_pooled() -> None:
    # The class attribute is_pooled_backend answers it; only the engines (which
    # compose the mixin) and its own modules import it.
    edges, _ = _graph()
    mixin_modules = {f"{PACKAGE}.mixin", f"{PACKAGE}.wrapper", f"{PACKAGE}.checkout"}
    importers = sorted(
        module
        for module, targets in edges.items()
        if targets & mixin_modules
        and module not in mixin_modules
        and not module.endswith(".base")
    )
    # poolstats imports application_name(), a naming rule, not the class.
    assert importers in ([], [f"{PACKAGE}.management.commands.poolstats"]), importers


def test_every_module_opens_with_a_paragraph_on_what_it_holds() -> None:
    # A newcomer reads the first paragraph of each module to find their way; an
    # empty package marker (an engine's __init__.py) needs none.
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        if not source.strip():
            continue
        if not ast.get_docstring(ast.parse(source)):
            missing.append(_module_name(path))
    assert missing == [], f"modules without a docstring: {missing}"
