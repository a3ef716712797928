"""benchmarks/contracts.py: its table from run records (no benchmark runs here), and the
typed servers it measures answer the load generator's echo as the plain one does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "contracts.py"
# The load generator's payload (../shared/bench/loadgen.js).
PAYLOAD = {
    "user": "alice",
    "room": "bench",
    "text": "hello world, this is a benchmark payload",
    "n": 12345,
    "ok": True,
    "tags": ["a", "b"],
}


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("contracts_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(server: str, cpu: float | None, rate: float = 1000.0, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": "s1",
        "server_cpu_s_per_100k": cpu,
        "result": {"replies_per_s": rate},
        **extra,
    }


def test_table_gives_medians_and_ratios_to_echo() -> None:
    bench = load()
    text, medians = bench.table(
        [
            record("echo", 1.0),
            record("echo", 3.0),
            record("echo", 2.0),
            record("typed-msgspec", 2.1),
            record("typed-pydantic", 3.0),
            record("typed-pydantic", None, error="loadgen exit 1"),
        ]
    )
    assert medians == {"echo": 2.0, "typed-msgspec": 2.1, "typed-pydantic": 3.0}
    assert "| typed-msgspec | 1 | 2.100 | 1.050 | 1000 |" in text
    assert "| typed-pydantic | 1 | 3.000 | 1.500 | 1000 |" in text


def test_table_marks_a_server_without_records_as_failed() -> None:
    text, medians = load().table([record("echo", 1.0)])
    assert "| typed-msgspec | 0 | failed | | |" in text
    assert medians == {"echo": 1.0}


@pytest.mark.parametrize("name", ["msgspec_app", "pydantic_app"])
async def test_typed_servers_echo_the_load_generators_payload(ws_client, name: str) -> None:
    from benchmarks import contracts_app

    client = await ws_client(getattr(contracts_app, name))
    assert await client.request("rpc", "/echo", PAYLOAD, message_id=7) == {"id": 7, "data": PAYLOAD}
    reply = await client.request("rpc", "/echo", {**PAYLOAD, "text": ""}, message_id=8)
    assert reply["error"]["code"] == 400
