"""benchmarks/observability.py: its table from run records and the harness command it
builds (no benchmark runs here)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "observability.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("observability_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(server: str, cpu: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": "s1",
        "server_cpu_s_per_100k": cpu,
        "result": {"replies_per_s": 1000.0},
        **extra,
    }


def test_table_gives_medians_ratios_and_targets() -> None:
    bench = load()
    text, medians = bench.table(
        [
            record("off", 1.0),
            record("off", 2.0),
            record("off", 3.0),
            record("metrics", 2.04),
            record("metrics", None, error="loadgen exit 1"),
        ],
        ["off", "metrics"],
    )
    assert medians == {"off": 2.0, "metrics": 2.04}
    assert "| metrics | 1 | 2.040 | 1.020 | <= 1.03 | 1000 |" in text
    assert "| off | 3 | 2.000 | 1.000 |  | 1000 |" in text


def test_a_config_without_records_is_marked_failed() -> None:
    text, _ = load().table([record("off", 1.0)], ["off", "metrics"])
    assert "| metrics | 0 | failed | | <= 1.03 | |" in text


def test_the_metrics_config_runs_the_reference_app_with_metrics() -> None:
    bench = load()
    args = argparse.Namespace(
        reps=1, warmup=1.0, duration=2.0, timeout=30.0, raw_dir=Path("/tmp/raw"), pin=False
    )
    cmd = bench.harness_cmd(args, Path("/h/bench.py"), ["off", "metrics"])
    extras = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--extra"]
    assert extras[0].startswith("off=") and "--metrics" not in extras[0]
    assert extras[1].startswith("metrics=") and extras[1].endswith("--metrics")
    assert "examples.reference_app:app" in extras[1] and "{port}" in extras[1]
    assert cmd[cmd.index("--compare") + 1] == "off,metrics" and "--no-pin" in cmd


def test_only_must_name_the_baseline() -> None:
    assert load().main(["--only", "metrics"]) == 2
