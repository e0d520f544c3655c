"""The import order: templates -> pipelines (commands -> their shared runtime) -> models -> transforms; no
cycles, no private names across modules.

Read from the sources' import statements (wherever they are, functions included), so that a
shortcut taken anywhere shows up here, not only when that code path runs.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("transforms", "models", "pipelines", "templates")  # each may import only those before it
# pipelines' commands; the rest of pipelines is what they share (graph, serving, cli, options, runners ...)
COMMANDS = {f"pipelines.{name}" for name in
            ("generate", "train", "score", "produce", "backfill", "monitor", "cluster", "demo", "stream_demo", "rtml")}
DEMOS = {"pipelines.demo", "pipelines.stream_demo"}  # they run other commands, as a user would


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}" if path.stem != "__init__" else package
            found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, str | None]]:
    """(project module, name taken from it or None) for every import of the project's modules."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                out.append((submodule, None) if submodule in MODULES else (node.module, alias.name))
    return out


def test_packages_import_only_the_ones_below_them():
    wrong = []
    for name, tree in MODULES.items():
        rank = PACKAGES.index(name.split(".")[0])
        for imported, _ in _imports(tree):
            if PACKAGES.index(imported.split(".")[0]) > rank:
                wrong.append(f"{name} imports {imported}")
    assert not wrong


def test_commands_share_code_through_the_runtime_not_each_other():
    wrong = []
    for name, tree in MODULES.items():
        if not name.startswith("pipelines.") or name in DEMOS:
            continue
        for imported, _ in _imports(tree):
            if imported in COMMANDS and imported != name:
                wrong.append(f"{name} imports the command {imported}")
    assert not wrong


def test_no_import_cycles():
    graph = {name: {imported for imported, _ in _imports(tree) if imported in MODULES and imported != name}
             for name, tree in MODULES.items()}
    cycles, done = [], set()

    def visit(name, path):
        if name in path:
            cycles.append(" -> ".join(path[path.index(name):] + [name]))
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles


def test_no_module_takes_another_modules_private_names():
    taken = []
    for name, tree in MODULES.items():
        aliases = {}
        for imported, what in _imports(tree):
            if what is not None and what.startswith("_"):
                taken.append(f"{name} imports {imported}.{what}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    full = alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
                    if full in MODULES and full != name:
                        aliases[alias.asname or alias.name.split(".")[-1]] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                taken.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not taken
