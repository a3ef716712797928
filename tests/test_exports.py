"""The public names: ``wsevents.__all__`` is sorted, resolves, and is documented."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import wsevents

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "api.md"

MODULES = [
    "wsevents",
    "wsevents.app",
    "wsevents.cluster",
    "wsevents.composables",
    "wsevents.connection",
    "wsevents.dispatch",
    "wsevents.metrics",
    "wsevents.exceptions",
    "wsevents.presence",
    "wsevents.protocol",
    "wsevents.ratelimit",
    "wsevents.rooms",
    "wsevents.routing",
    "wsevents.server",
    "wsevents.deadlines",
    "wsevents.testing",
    "wsevents.testing.client",
    "wsevents.testing.cluster",
    "wsevents.testing.conformance",
    "wsevents.testing.contexts",
    "wsevents.testing.plugin",
    "wsevents.transports",
    "wsevents.transports.base",
    "wsevents.transports.memory",
    "wsevents.transports.redis",
    "wsevents.client",
]


def test_all_is_sorted_without_duplicates() -> None:
    names = list(wsevents.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", wsevents.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(wsevents, name) is not None


@pytest.mark.parametrize("name", wsevents.__all__)
def test_every_exported_name_is_in_the_api_reference(name: str) -> None:
    page = API_PAGE.read_text(encoding="utf-8")
    assert re.search(rf"^::: wsevents\.{name}$", page, re.MULTILINE), name


@pytest.mark.parametrize("module", MODULES)
def test_module_all_names_resolve_once_and_are_public(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert len(names) == len(set(names)), module
    assert [n for n in names if n.startswith("_")] == [], module
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_adapter_entry_points_are_not_public() -> None:
    for name in ("open_connection", "close_connection", "handle_frame", "wait_capacity"):
        assert not hasattr(wsevents.WsApp, name), name
    assert not hasattr(wsevents.WsServer, "attach") and not hasattr(wsevents.WsServer, "start")
