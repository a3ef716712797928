"""benchmarks/history_cost.py works (at a tiny size: no benchmark runs here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "history_cost.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("history_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_it_measures_both_rooms_and_a_complete_replay() -> None:
    result = await load().main(members=5, pushes=5, missed=30)
    assert result["members"] == 5 and result["replayed"] == 30
    assert result["plain_cpu_per_delivery_us"] >= 0 and result["history_cpu_per_delivery_us"] >= 0
    assert result["replay_seconds"] > 0


WIRE = Path(__file__).resolve().parents[1] / "benchmarks" / "history_wire.py"


def load_wire() -> ModuleType:
    spec = importlib.util.spec_from_file_location("history_wire_bench", WIRE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wire_fanout_table_gives_the_ratio_to_the_plain_room() -> None:
    def rec(server: str, cpu: float | None) -> dict[str, object]:
        return {
            "server": server,
            "server_cpu_s_per_100k": cpu,
            "result": {"deliveries_per_s": 1000.0, "lost": 0},
        }

    text, medians = load_wire().fanout_table(
        [rec("history-off", 2.0), rec("history-on", 2.2), rec("history-on", None)]
    )
    assert medians == {"history-off": 2.0, "history-on": 2.2}
    assert "| history-on | 1 | 2.200 | 1.100 | 1000 | 0 |" in text


async def test_the_wire_replay_gets_every_missed_push_in_order_before_the_reply() -> None:
    import os

    from benchmarks.history_app import load_app

    bench = load_wire()
    ws = load_app()
    host, port = await ws.listen(host="127.0.0.1", port=0)
    try:
        run = await bench.replay_once(f"http://{host}:{port}/ws", 300, os.getpid())
    finally:
        await ws.close()
    assert run["replayed"] == 300 and run["in_order"] is True and run["recovered"] is True
    assert run["seconds"] > 0
