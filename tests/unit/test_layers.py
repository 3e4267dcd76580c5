"""The import rules of docs/design.md, read from the source with `ast`.

- no import cycle among Xenia's modules (imports for type checking count too);
- the layers below the engine (hostos, qemu, drivers, containers, devices, storage,
  network, store, config) import nothing of host/ (the manager and what is built on
  it), migration, api, cli, the engine or the daemon; host/ nothing of migration, api,
  cli or the engine;
- no module reaches into another object's private members (`other._x`) or imports a
  private name, and none needs `type: ignore[attr-defined]` to reach what it should not;
- QMP command names are spelled only in qemu/commands.py.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "xenia"

BELOW_ENGINE = ("hostos", "qemu", "drivers", "containers", "devices", "storage", "network",
                "store", "config")
ENGINE_AND_ABOVE = ("xenia.host", "xenia.migration", "xenia.api", "xenia.cli",
                    "xenia.engine", "xenia.daemon")
ABOVE_MANAGER = ("xenia.migration", "xenia.api", "xenia.cli", "xenia.engine", "xenia.daemon")
# Private names of the standard library that are meant to be called.
STDLIB_PRIVATE = {("os", "_exit")}
QMP_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
TRANSPORT_METHODS = ("command", "execute", "_call")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parsed(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), str(MODULES[name]))


def imports(name: str) -> set[str]:
    """The Xenia modules `name` imports, anywhere in it (functions, TYPE_CHECKING too)."""
    found: set[str] = set()
    is_package = MODULES[name].name == "__init__.py"
    for node in ast.walk(parsed(name)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from xenia.hostos import affinity` imports the module xenia.hostos.affinity
            found.update(f"{base}.{a.name}" for a in node.names
                         if f"{base}.{a.name}" in MODULES)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def test_the_rules_see_the_code() -> None:
    assert len(MODULES) > 100
    assert "xenia.hostos.cgroups" in GRAPH["xenia.drivers.qemu_cpu"]
    assert "xenia.host.manager" in GRAPH["xenia.engine"]


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(GRAPH[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def offenders(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {dep}"
            for name in sorted(GRAPH) if name == layer or name.startswith(layer + ".")
            for dep in sorted(GRAPH[name])
            if any(dep == f or dep.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("package", BELOW_ENGINE)
def test_lower_layers_do_not_import_the_engine(package: str) -> None:
    assert offenders(f"xenia.{package}", ENGINE_AND_ABOVE) == []


def test_the_manager_does_not_import_what_is_built_on_it() -> None:
    assert offenders("xenia.host", ABOVE_MANAGER) == []


def test_migration_does_not_import_the_api() -> None:
    assert offenders("xenia.migration", ("xenia.api", "xenia.cli", "xenia.engine")) == []


def private_uses(name: str) -> Iterator[str]:
    for node in ast.walk(parsed(name)):
        if isinstance(node, ast.Attribute):
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and (owner.id in ("self", "cls")
                                                or (owner.id, attr) in STDLIB_PRIVATE):
                continue
            yield f"{name}:{node.lineno}: .{attr} of {ast.unparse(owner)}"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield f"{name}:{node.lineno}: imports {alias.name} from {node.module}"


def test_no_access_to_others_private_members() -> None:
    assert [use for name in sorted(MODULES) for use in private_uses(name)] == []


def test_no_attr_defined_ignores() -> None:
    assert [f"{module_name(p)}:{n}" for p in MODULES.values()
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if "type: ignore[attr-defined]" in line] == []


def qmp_calls(name: str) -> Iterator[str]:
    tree = parsed(name)
    decorators = {id(d) for node in ast.walk(tree)
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  for d in node.decorator_list}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and id(node) not in decorators
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in TRANSPORT_METHODS and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and QMP_NAME.match(node.args[0].value)):
            yield f"{name}:{node.lineno}: {ast.unparse(node)[:80]}"


def test_qmp_commands_are_named_only_in_the_typed_wrappers() -> None:
    assert list(qmp_calls("xenia.qemu.commands")), "the check finds the wrappers' calls"
    assert [c for name in sorted(MODULES) if name != "xenia.qemu.commands"
            for c in qmp_calls(name)] == []
