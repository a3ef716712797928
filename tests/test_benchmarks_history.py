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
