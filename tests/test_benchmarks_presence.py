"""benchmarks/presence.py: its tables from results (no benchmark runs here), its churn client
against two in-process instances, and the presence-on server it compares."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from examples import reference_app
from wsevents import MemoryBus, MemoryTransport, WsApp
from wsevents.server import attach

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "presence.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("presence_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def record(server: str, cpu: float | None, rate: float = 1000.0, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": "s2_1000",
        "server_cpu_s_per_100k": cpu,
        "result": {"deliveries_per_s": rate, "lost": 0},
        **extra,
    }


def test_fanout_table_gives_medians_and_the_ratio_to_presence_off() -> None:
    bench = load()
    text, medians = bench.fanout_table(
        [
            record("presence-off", 1.0),
            record("presence-off", 3.0),
            record("presence-off", 2.0),
            record("presence-on", 2.1, rate=900.0),
            record("presence-on", None, error="loadgen exit 1"),
        ]
    )
    assert medians == {"presence-off": 2.0, "presence-on": 2.1}
    assert "| presence-off | 3 | 2.000 | 1.000 | 1000 | 0 |" in text
    assert "| presence-on | 1 | 2.100 | 1.050 | 900 | 0 |" in text


def test_fanout_table_marks_a_server_without_records_as_failed() -> None:
    text, medians = load().fanout_table([record("presence-off", 1.0)])
    assert "| presence-on | 0 | failed | | | |" in text
    assert medians == {"presence-off": 1.0}


def test_an_unknown_part_is_refused() -> None:
    assert load().main(["--parts", "nothing"]) == 2


def two_instances() -> list[WsApp]:
    bus = MemoryBus()
    made = []
    for _ in range(2):
        ws = WsApp(heartbeat=0, transport=MemoryTransport(bus))
        reference_app.add_presence(ws)
        made.append(ws)
    return made


async def test_the_churn_client_joins_and_leaves_on_both_instances(aiohttp_client: Any) -> None:
    bench = load()
    servers = [await aiohttp_client(attach(ws, web.Application(), "/ws")) for ws in two_instances()]
    urls = [str(server.make_url("/ws")) for server in servers]
    options = argparse.Namespace(rooms=2, clients=4, churn_warmup=0.0, churn_duration=0.3)
    result = await bench.churn(urls, options, [os.getpid()], None)
    assert result.cycles > 0
    assert result.errors == 0
    assert result.rooms_empty
    assert result.redis_cpu_s is None
    assert "| 4 | 0.3 |" in bench.churn_table(result)


async def test_the_presence_on_server_tracks_chat_rooms_and_leaves_the_reference_app(
    ws_client: Any,
) -> None:
    sys.path.insert(0, str(SCRIPT.parent.parent))
    from benchmarks import presence_app

    assert presence_app.app is not reference_app.app
    assert reference_app.app.presence.mode("/chat/rooms/lobby") == "none"
    assert presence_app.app.presence.mode("/chat/rooms/lobby") == "list"
    client = await ws_client(presence_app.app)
    assert await client.call("subscribe", "/chat/rooms/lobby") == {"subscribed": True}
    push = await client.next_push()
    assert push["event"] == "presence"
    assert push["path"] == "/chat/rooms/lobby"
    assert [join["user"] for join in push["data"]["joins"]] == [
        (await client.call("rpc", "/whoami"))["id"]
    ]


@pytest.fixture(autouse=True)
def _keep_sys_path() -> Any:
    saved = list(sys.path)
    yield
    sys.path[:] = saved
