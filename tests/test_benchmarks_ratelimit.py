"""benchmarks/ratelimit_cost.py and benchmarks/ratelimit_flood.py: the in-process figures, the
tables from run records (no harness run here), the servers they measure, and the flooder
against a real server for a second."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from wsevents import RateLimit, WsApp, use_ws_message

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The load generator's payload (../shared/bench/loadgen.js).
PAYLOAD = {
    "user": "alice",
    "room": "bench",
    "text": "hello world, this is a benchmark payload",
    "n": 12345,
    "ok": True,
    "tags": ["a", "b"],
}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(server: str, cpu: float | None = 1.0, **result: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": "s1",
        "server_cpu_s_per_100k": cpu,
        "result": {"replies_per_s": 1000.0, **result},
    }


def test_the_script_measures_each_endpoint() -> None:
    figures = load("ratelimit_cost").measure(calls=200, reps=1)
    assert set(figures) == {"/plain", "/limited", "/limited-user"}
    assert all(ns > 0 for ns in figures.values())


def test_the_wire_table_gives_microseconds_per_message_and_the_difference() -> None:
    text, medians = load("ratelimit_cost").wire_table(
        [
            record("echo", 3.0),
            record("echo", 3.2),
            record("echo", 3.4),
            record("limited", 3.3),
            record("limited-user", None),
            {**record("limited-user", 9.0), "error": "loadgen exit 1"},
        ]
    )
    assert medians == pytest.approx({"echo": 32.0, "limited": 33.0})
    assert "| limited | 1 | 33.00 | +1.00 | 1000 |" in text
    assert "| limited-user | 0 | failed | | |" in text


@pytest.mark.parametrize("name", ["plain_app", "limited_app", "limited_user_app"])
async def test_the_wire_servers_echo_the_load_generators_payload(ws_client, name: str) -> None:
    from benchmarks import ratelimit_app

    app = getattr(ratelimit_app, name)
    client = await ws_client(app)
    for message_id in range(1, 50):
        reply = await client.request("rpc", "/echo", PAYLOAD, message_id=message_id)
        assert reply == {"id": message_id, "data": PAYLOAD}
    limits = [limiter.limit for route in app.routes() for limiter in route.rate_limits]
    assert limits == ([] if name == "plain_app" else [limits[0]])
    assert all(limit.rate >= 1e12 for limit in limits)


def test_the_flood_table_compares_p99_and_reports_the_flooder() -> None:
    bench = load("ratelimit_flood")
    latency = {"p50_ms": 1.0, "p99_ms": 10.0}
    flood = {**bench.new_stats(), "sent": 1000, "refused_429": 900, "ok": 5, "seconds": 2.0}
    text, medians = bench.table(
        [
            record("quiet", latency=latency),
            record("quiet", latency={"p50_ms": 1.0, "p99_ms": 20.0}),
            {**record("flooded", latency={"p50_ms": 2.0, "p99_ms": 16.5}), "port": 7},
            {**record("flooded", latency=latency), "error": "server exited"},
        ],
        {7: {**flood, "closed_4429": 3, "connects": 4}},
    )
    assert medians == {"quiet": 15.0, "flooded": 16.5}
    assert "| flooded | 1 | 2.00 | 16.50 | 1.100 | 1000 |" in text
    assert "flooder (1 runs): 500 msg/s sent, 900 refused (429), 5 served" in text
    assert "3 closed with 4429, 4 connections" in text
    text, medians = bench.table([record("quiet", latency=latency)], {})
    assert "| flooded | 0 | failed | | | |" in text and "flooder" not in text


async def test_the_flooder_is_refused_closed_and_reconnects() -> None:
    bench = load("ratelimit_flood")
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", bench.FLOOD_PATH, rate_limit=RateLimit(5, per=1.0, burst=5))
    def limited_echo() -> Any:
        return use_ws_message().data

    _, port = await ws.listen(port=0)
    try:
        stats = await bench.flood(port, rate=3000.0, max_seconds=1.5)
    finally:
        await ws.close()
    assert stats["sent"] > 100 and stats["ok"] >= 5
    assert stats["refused_429"] >= 50
    assert stats["closed_4429"] >= 1 and stats["connects"] >= 2
    assert stats["other_replies"] == 0
    # With no server the flooder stops by itself.
    stopped = await bench.flood(port, rate=10.0, max_seconds=0.3)
    assert stopped["connects"] == 0
