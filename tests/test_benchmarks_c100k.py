"""benchmarks/c100k.py works end to end at a tiny size (no benchmark runs here): a real
server process, load processes, every phase, and the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "c100k.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("c100k_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up there
    spec.loader.exec_module(module)
    return module


def test_every_phase_runs_against_the_benchmark_app(tmp_path: Path) -> None:
    bench = load()
    a = bench.parser().parse_args(
        [
            *("--connections", "120", "--rooms", "10", "--idle", "0.5", "--broadcasts", "1"),
            *("--no-pin", "--workers", "2"),
        ]
    )
    result = bench.run(a)
    assert result["connections"] == 120
    assert result["accept"]["opened"] == 120 and result["accept"]["errors"] == 0
    assert result["idle"]["alive"] == 120 and result["idle"]["kb_per_conn"] > 0
    [broadcast] = result["broadcast"]
    assert broadcast["delivered"] == 120
    assert 0 <= broadcast["spread_s"] <= broadcast["publish_to_last_s"]
    assert result["shutdown"]["close_codes"] == {"1001": 120}
    assert result["shutdown"]["still_open"] == 0
    text = bench.table([result])
    assert "| wsevents | 120 |" in text


def test_it_refuses_a_count_over_the_descriptor_limit_unless_asked_to_fit() -> None:
    bench = load()
    limit = bench.raise_nofile()
    a = bench.parser().parse_args(["--connections", str(limit + 1), "--no-pin"])
    try:
        bench.run(a)
    except SystemExit as exc:
        assert "RLIMIT_NOFILE" in str(exc) and "--cap-to-limit" in str(exc)
    else:
        raise AssertionError("no SystemExit")
