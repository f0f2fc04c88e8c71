"""The package's import graph: no cycles (imports inside functions count), packages import one way (the order in
docs/architecture.md, "The layers of the package"), the registry is a leaf and a family imports no other family."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zoo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """zoo modules imported anywhere in ``tree`` (functions included, ``if TYPE_CHECKING:`` blocks excluded)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "zoo")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "zoo":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _imports(tree, name, path.name == "__init__.py", known) if m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_registry_is_a_leaf():
    assert import_graph()["zoo.registry"] == set()


def test_cycle_finder_finds_a_cycle():
    """The checker itself can fail: a function-level import that closes a loop is found."""
    tree = ast.parse("def f():\n    from zoo.a import thing\n")
    graph = {"zoo.a": {"zoo.b"}, "zoo.b": _imports(tree, "zoo.b", False, {"zoo.a", "zoo.b"})}
    assert find_cycle(graph) == ["zoo.a", "zoo.b", "zoo.a"]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from zoo.a import thing\n")
    assert _imports(typed, "zoo.b", False, {"zoo.a", "zoo.b"}) == set()


#: zoo's packages (and top-level modules) from the bottom up: a module imports only from its own package and from
#: those in earlier ranks, function-level imports included. Keep in step with docs/architecture.md.
PACKAGE_ORDER = (
    ("zoo.registry", "zoo.version", "zoo.extras", "zoo.checks"),
    ("zoo.layers",),
    ("zoo.losses",),
    ("zoo.data",),
    ("zoo.weights",),
    ("zoo.factory",),
    ("zoo.engine",),
    ("zoo.models",),
    ("zoo.export",),
    ("zoo.cli",),
    ("zoo", "zoo.__main__"),
)


def package_of(module: str) -> str:
    """The unit of :data:`PACKAGE_ORDER` a module belongs to (``zoo.weights.load`` -> ``zoo.weights``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def order_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {unit: i for i, units in enumerate(PACKAGE_ORDER) for unit in units}
    problems = []
    for module, imports in sorted(graph.items()):
        here = package_of(module)
        for imported in sorted(imports):
            there = package_of(imported)
            if there != here and rank[there] >= rank[here]:
                problems.append(f"{module} imports {imported}: {there} is not below {here}")
    return problems


def test_every_package_has_a_place_in_the_order():
    units = {unit for units in PACKAGE_ORDER for unit in units}
    assert {package_of(m) for m in import_graph()} <= units


def test_packages_import_one_way():
    problems = order_violations(import_graph())
    assert not problems, "\n".join(problems)


def test_order_checker_finds_an_upward_import():
    """The checker itself can fail: a function-level import of the engine from the data package is refused."""
    tree = ast.parse("def f():\n    from zoo.engine.predict import predict\n")
    graph = {"zoo.data.video": _imports(tree, "zoo.data.video", False, {"zoo.engine.predict", "zoo.data.video"})}
    assert order_violations(graph) == ["zoo.data.video imports zoo.engine.predict: zoo.engine is not below zoo.data"]


def families() -> list[str]:
    """The family folders: packages under zoo/models."""
    return sorted(p.parent.name for p in (PACKAGE / "models").glob("*/__init__.py"))


def test_family_folders_are_found():
    assert {"rtdetr", "detr"} <= set(families())


def parent_folders(family: str) -> set[str]:
    """The family folders of the classes a family's Detector subclasses (``class DEIMv2(DFINE)``: a family of a
    family reuses its parent's parts through its seams)."""
    import zoo.models  # noqa: F401  (registers the families)
    from zoo.registry import family_class, list_families

    folders = set()
    for name in list_families():
        cls = family_class(name)
        if cls.__module__.split(".")[2:3] == [family]:
            folders |= {base.__module__.split(".")[2] for base in cls.__mro__[1:]
                        if base.__module__.startswith("zoo.models.") and base.__module__.count(".") >= 3}
    return folders - {family}


@pytest.mark.parametrize("family", families())
def test_family_folder_does_not_import_another_family(family):
    """...but the family it subclasses."""
    graph = import_graph()
    others = {f"zoo.models.{f}" for f in families() if f != family and f not in parent_folders(family)}
    for module, imports in graph.items():
        if module.startswith(f"zoo.models.{family}"):
            crossing = {m for m in imports if any(m == o or m.startswith(o + ".") for o in others)}
            assert not crossing, f"{module} imports {crossing}"
