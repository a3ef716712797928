"""benchmarks/soak.py: its checker on made-up sessions, its refusals, and a short real run
(two instances on a redis-server of its own, both restarts, the JSON report)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "soak.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_checker_counts_expected_lost_duplicated_and_disrupted_deliveries() -> None:
    soak = load()
    Session, Sent = soak.Session, soak.Sent
    stayed = Session(1, "/r", "a", joined=0.0, left=None, got={"m1": 1, "m2": 2})
    late = Session(2, "/r", "b", joined=5.0, left=None, got={"m1": 1})  # joined after m1
    gone = Session(3, "/r", "b", joined=0.0, left=2.5, got={})  # left within the grace
    other = Session(4, "/other", "a", joined=0.0, left=None, got={})
    missed = Session(5, "/r", "b", joined=0.0, left=None, got={"m2": 1})
    sent = [
        Sent("m1", "/r", 1, sent=1.0, replied=1.1),
        Sent("m2", "/r", 1, sent=10.0, replied=10.1),  # inside the disruption window
        Sent("m3", "/r", 1, sent=20.0, replied=None),  # no reply: expects nothing
    ]
    result = soak.analyse([stayed, late, gone, other, missed], sent, [(9.0, 11.0)], 3.0)
    # Expected: m1 by stayed and missed (gone left at 2.5 <= 1.1 + 3, late joined after
    # it), m2 by stayed, late and missed. late never got m2, inside the disruption window.
    assert result == {
        "broadcasts": 3,
        "broadcasts_replied": 2,
        "deliveries_received": 5,
        "expected": 5,
        "delivered": 3,
        "lost": 2,  # m1 to missed, m2 to late
        "lost_outside_disruptions": 1,
        "duplicated": 1,  # m2 twice to stayed
        "unexpected_but_allowed": 1,  # m1 to late, who joined after it was sent
    }
    inside = soak.analyse([missed], [Sent("m9", "/r", 1, 10.0, 10.2)], [(9.0, 11.0)], 3.0)
    assert (inside["lost"], inside["lost_outside_disruptions"]) == (1, 0)


@pytest.mark.parametrize(
    "args", [["--minutes", "0"], ["--vus", "0"], ["--redis-server", ""]], ids=str
)
def test_bad_settings_exit_2_before_starting_anything(args: list[str]) -> None:
    assert load().main(args) == 2


@pytest.mark.functional
@pytest.mark.timeout(300)
def test_a_short_soak_survives_both_restarts_and_writes_its_report(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--minutes", "0.25", "--vus", "16", "--rooms", "3"),
            *("--session", "1", "3", "--sample-interval", "1", "--seed", "7", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(out.read_text())
    deliveries = report["deliveries"]
    assert deliveries["delivered"] > 0 and deliveries["duplicated"] == 0
    assert deliveries["expected"] >= deliveries["delivered"]
    assert [d["kind"] for d in report["disruptions"]] == ["redis_restart", "instance_restart"]
    assert all(d["recovery_s"] is not None for d in report["disruptions"])
    assert report["counts"]["echo_ok"] > 0 and report["counts"]["echo_wrong"] == 0
    assert set(report["memory"]) == {"a", "b"}
    assert len(report["memory"]["b"]["pids"]) == 2  # restarted
    assert all(m["rss_kib_end"] > 0 for m in report["memory"].values())
    # Connected to Redis (none while it restarts); never more than the descriptors.
    for series in report["samples"].values():
        assert all(0 <= point["redis_conns"] <= point["fds"] for point in series)
        assert max(point["redis_conns"] for point in series) >= 1
    assert "deliveries: expected" in result.stdout


def test_the_chart_draws_both_instances_and_their_restarts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    samples = {
        "a": [
            {"t": t, "pid": 1, "rss_kib": 50000 + t, "fds": 10, "redis_conns": 2} for t in (0, 5)
        ],
        "b": [
            {"t": 0, "pid": 2, "rss_kib": 50000, "fds": 9, "redis_conns": 2},
            {"t": 5, "pid": 3, "rss_kib": 49000, "fds": 8, "redis_conns": 1},
        ],
    }
    report = {"samples": samples, "disruptions": [{"at_s": 2.0}, {"at_s": 4.0}]}
    path = tmp_path / "soak.png"
    assert load().chart(report, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
