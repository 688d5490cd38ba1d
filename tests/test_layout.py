"""The layout holds: one import namespace, every package installed, no import
cycles, and the library never depends on the runtime."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.paths import ROOT

FOLDERS = ("pipeline", "agents", "schemas", "infra")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found["tierflow." + ".".join(parts)] = path
    return found


def top_level_imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, id(node) in top
            for alias in node.names:
                yield f"{node.module}.{alias.name}", id(node) in top


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, at_top in top_level_imports(path):
            if at_top and target in known and target != name:
                edges[name].add(target)
    return edges


def test_every_package_folder_is_installed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        "tierflow." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert folders == listed


def test_imports_use_the_tierflow_namespace() -> None:
    bare = [
        f"{path.relative_to(ROOT)}: {target}"
        for path in [*modules().values(), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]
        for target, _ in top_level_imports(path)
        if target.split(".")[0] in FOLDERS
    ]
    assert bare == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_library_never_imports_the_runtime() -> None:
    """tierflow.pipeline is the library and tierflow.schemas the contracts; only the
    command line (the imperative shell) may start the runtime in tierflow.agents."""
    offending = [
        f"{name} -> {target}"
        for name, path in modules().items()
        if name.startswith(("tierflow.pipeline.", "tierflow.schemas")) and not name.startswith("tierflow.pipeline.cli")
        for target, _ in top_level_imports(path)
        if target.startswith("tierflow.agents")
    ]
    assert offending == []


def test_contracts_depend_on_nothing_else_in_tierflow() -> None:
    offending = [
        f"{name} -> {target}"
        for name, path in modules().items()
        if name.startswith("tierflow.schemas")
        for target, _ in top_level_imports(path)
        if target.startswith("tierflow.") and not target.startswith("tierflow.schemas")
    ]
    assert offending == []


def test_every_data_file_ships_in_the_package() -> None:
    """Lua scripts, default configs, schemas, migrations and dashboard assets are read at
    run time: each must match a package-data pattern, or an installed tierflow breaks."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}

    def package_folder(package: str) -> Path:
        top = ".".join(package.split(".")[:2])
        return folders[top].joinpath(*package.split(".")[2:])

    patterns = [package_folder(package) / pattern for package, globs in setuptools["package-data"].items()
                for pattern in globs]
    shipped = {path for pattern in patterns for path in pattern.parent.glob(pattern.name)}
    data = {
        path for folder in FOLDERS for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert sorted(map(str, data - shipped)) == []
