"""benchmarks/ratelimit_cost.py runs and measures the three endpoints (a tiny run: the
figures themselves are not checked here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ratelimit_cost.py"


def test_the_script_measures_each_endpoint() -> None:
    spec = importlib.util.spec_from_file_location("ratelimit_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.measure(calls=200, reps=1)
    assert set(figures) == {"/plain", "/limited", "/limited-user"}
    assert all(ns > 0 for ns in figures.values())
