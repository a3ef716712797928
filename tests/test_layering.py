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
import wsevents.exceptions, wsevents.protocol, wsevents.routing
assert wsevents.protocol.parse_client_message('{{"event": "e", "path": "/"}}').path == "/"
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
