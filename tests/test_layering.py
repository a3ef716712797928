"""Imports only point down: the core is sans-I/O, only the adapter imports aiohttp."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import wsevents

PACKAGE = Path(wsevents.__file__).parent


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )


def test_core_imports_without_io() -> None:
    script = f"""
import sys, types
for name in ("aiohttp", "asyncio", "redis"):
    sys.modules[name] = None  # importing these now fails
pkg = types.ModuleType("wsevents")  # skip __init__, which loads the runtime
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["wsevents"] = pkg
import wsevents.exceptions, wsevents.protocol, wsevents.routing, wsevents._frames
import wsevents.ratelimit
import wsevents.contracts, wsevents.asyncapi
assert wsevents.protocol.parse_client_message('{{"event": "e", "path": "/"}}').path == "/"
assert wsevents._frames.encode_frame(wsevents._frames.OP_PING, b"") == b"\\x89\\x00"
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr


def test_blocking_imports_really_blocks_them() -> None:
    # Guards the test above: a module on the blocked list must fail to import.
    script = f"""
import sys, types
sys.modules["asyncio"] = None
pkg = types.ModuleType("wsevents")
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["wsevents"] = pkg
import wsevents.rooms
"""
    result = run_python(script)
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


def test_import_wsevents_loads_neither_aiohttp_nor_redis() -> None:
    script = """
import sys
import wsevents
loaded = sorted(
    name for name in sys.modules if name.split(".")[0] in ("aiohttp", "redis")
)
print(",".join(loaded))
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("module", ["app.py", "composables.py", "rooms.py", "connection.py"])
def test_module_imports_no_aiohttp_at_runtime(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    offenders = [
        node.lineno
        for node in _runtime_imports(tree)
        if any(name.split(".")[0] == "aiohttp" for name in _imported_modules(node))
    ]
    assert offenders == [], f"{module} imports aiohttp at runtime on lines {offenders}"


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""] if node.level == 0 else []


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import, also inside functions, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_runtime_import_scan_sees_imports_outside_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from aiohttp import web\n"
        "def f():\n    import aiohttp.web\n"
    )
    modules = [m for node in _runtime_imports(tree) for m in _imported_modules(node)]
    assert modules == ["typing", "aiohttp.web"]


@pytest.mark.parametrize(
    "module", ["wsevents.app", "wsevents.composables", "wsevents.rooms", "wsevents.connection"]
)
def test_runtime_modules_import_with_aiohttp_unimportable(module: str) -> None:
    script = f"""
import sys
sys.modules["aiohttp"] = None
sys.modules["redis"] = None
import {module}
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr


# -- the layer order of the package (STYLE.md §1) -------------------------------------------

# Lowest first: a module may import only modules listed before it (at runtime, including
# imports inside functions). Core (sans-I/O), runtime, app, adapter, client.
LAYER_ORDER = [
    "logs",
    "exceptions",
    "protocol",
    "ratelimit",
    "routing",
    "_frames",
    "contracts",
    "asyncapi",
    "_aio",
    "_adapters",
    "transports.base",
    "transports.memory",
    "transports.redis._url",
    "transports.redis._commands",
    "transports.redis._subscription",
    "transports.redis._pubsub",
    "transports.redis._sharded",
    "transports.redis._directory",
    "transports.redis._presence",
    "transports.redis._history",
    "transports.redis._capacity",
    "transports.redis._sessions",
    "transports.redis._ratelimit",
    "transports.redis",
    "transports.nats._names",
    "transports.nats._jet",
    "transports.nats._directory",
    "transports.nats._presence",
    "transports.nats._capacity",
    "transports.nats._history",
    "transports.nats._sessions",
    "transports.nats._ratelimit",
    "transports.nats",
    "transports",
    "connection",
    "_context",
    "deadlines",
    "cluster",
    "_spans",
    "tracing",
    "rooms",
    "presence",
    "history",
    "capacity",
    "metrics",
    "sessions",
    "dispatch",
    "composables",
    "app",
    "server",
    "client._backoff",
    "client._listeners",
    "client._rpc",
    "client._recovery",
    "client._presence",
    "client._client",
    "client",
]
# May import anything; nothing in the package imports them.
TESTING = {
    "testing",
    "testing.contexts",
    "testing.client",
    "testing.conformance",
    "testing.cluster",
    "testing.plugin",
}
TOP = {"", "__main__"} | TESTING
# The client talks to servers over aiohttp: of the package it may use the core and _aio.
CLIENT_MAY_IMPORT = {"exceptions", "protocol", "routing", "_aio"}


def _package_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for source in PACKAGE.rglob("*.py"):
        parts = list(source.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = source
    return modules


def _package_imports(name: str, source: Path) -> set[str]:
    """The package modules that module ``name`` imports at runtime (names relative to it)."""
    is_package = source.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_package else here[:-1]
    known = _package_modules()
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.startswith("wsevents")]
            found.update(t.removeprefix("wsevents").lstrip(".") for t in targets)
            continue
        if node.level == 0:
            if node.module and node.module.split(".")[0] == "wsevents":
                found.add(node.module.removeprefix("wsevents").lstrip("."))
            continue
        anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        prefix = [*anchor, *(node.module.split(".") if node.module else [])]
        module = ".".join(prefix)
        if node.module is None:  # from . import x: each name is a module
            found.update(".".join([*prefix, alias.name]) for alias in node.names)
        else:
            found.add(module)
    return {m for m in found if m in known}


def test_every_package_module_has_a_place_in_the_layer_order() -> None:
    assert set(_package_modules()) == set(LAYER_ORDER) | TOP


@pytest.mark.parametrize("module", LAYER_ORDER)
def test_imports_only_point_down(module: str) -> None:
    source = _package_modules()[module]
    rank = LAYER_ORDER.index(module)
    imported = _package_imports(module, source)
    upward = sorted(m for m in imported if m in TOP or LAYER_ORDER.index(m) >= rank)
    assert upward == [], f"wsevents.{module} imports {upward}, which are not below it"
    if module.startswith("client"):
        outside = sorted(m for m in imported if not m.startswith("client"))
        assert set(outside) <= CLIENT_MAY_IMPORT, f"the client imports {outside}"


def test_only_the_adapter_and_the_client_import_aiohttp() -> None:
    offenders = []
    for name, source in _package_modules().items():
        if name in TOP or name == "server" or name.startswith("client"):
            continue
        for node in _runtime_imports(ast.parse(source.read_text(encoding="utf-8"))):
            if any(m.split(".")[0] == "aiohttp" for m in _imported_modules(node)):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_the_import_scan_sees_an_upward_import_inside_a_function(tmp_path: Path) -> None:
    # Guards the scan above: a function-level relative import is found and resolved.
    source = tmp_path / "app.py"
    source.write_text("def attach():\n    from .server import attach\n", encoding="utf-8")
    assert _package_imports("app", source) == {"server"}
    nested = tmp_path / "redis.py"
    nested.write_text("from ..exceptions import TransportError\n", encoding="utf-8")
    assert _package_imports("transports.redis", nested) == {"exceptions"}


def test_only_the_pytest_plugin_imports_pytest() -> None:
    # wsevents.testing must work without pytest (check_transport in a plain script).
    importers = sorted(
        name
        for name, source in _package_modules().items()
        for node in _runtime_imports(ast.parse(source.read_text(encoding="utf-8")))
        if any(m.split(".")[0] == "pytest" for m in _imported_modules(node))
    )
    assert importers == ["testing.plugin"]
