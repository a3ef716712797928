"""benchmarks/run.py --from-run renders a raw run folder; no benchmark runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _record(server: str, scenario: str, rep: int, **fields: Any) -> dict[str, Any]:
    """A run record shaped as the harness writes it."""
    rec: dict[str, Any] = {
        "server": server,
        "cmd": f"{server} --port {{port}}",
        "proto": "wooks",
        "scenario": scenario,
        "rep": rep,
        "pinned": True,
        "server_cpu": "1",
        "client_cpu": "0",
        "loadgen_rc": 0,
    }
    rec.update(fields)
    return rec


def _rpc(server: str, rep: int, replies_per_s: int, cpu_per_100k: float) -> dict[str, Any]:
    result = {
        "scenario": "s1",
        "replies": replies_per_s * 8,
        "replies_per_s": replies_per_s,
        "client_cpu_pct": 80.0,
        "latency": {"p50_ms": 4.0, "p99_ms": 9.0},
        "errors": 0,
        "bad_replies": 0,
    }
    return _record(
        server,
        "s1",
        rep,
        result=result,
        server_cpu_pct=99.0,
        server_cpu_s_per_100k=cpu_per_100k,
    )


def _memory(
    server: str, scenario: str, rep: int, kb_per_conn: float, **extra: Any
) -> dict[str, Any]:
    result = {"scenario": "s3", "open_at_measure": 2000, "errors": 0, "bad_replies": 0}
    return _record(
        server,
        scenario,
        rep,
        result=result,
        rss_before_kb=40960,
        rss_after_kb=40960 + int(kb_per_conn * 2000),
        kb_per_conn=kb_per_conn,
        **extra,
    )


def _fanout(
    server: str, members: int, rep: int, deliveries_per_s: int, cpu: float
) -> dict[str, Any]:
    result = {
        "scenario": "s2",
        "subs": members,
        "deliveries": deliveries_per_s * 8,
        "deliveries_per_s": deliveries_per_s,
        "broadcasts_per_s": deliveries_per_s / members,
        "lost": 0,
        "client_cpu_pct": 90.0,
        "latency": {"p50_ms": 3.0, "p99_ms": 7.0},
        "errors": 0,
        "bad_replies": 0,
    }
    return _record(
        server,
        f"fanout_{members}",
        rep,
        result=result,
        server_cpu_pct=98.0,
        server_cpu_s_per_100k=cpu,
        series="fanout",
        size=members,
        base_scenario="s2_100",
    )


@pytest.fixture
def raw_run(tmp_path: Path) -> Path:
    """A run of wsevents and limit-aiohttp: s1 and s3, a fan-out and a memory series."""
    run_dir = tmp_path / "20260101-000000-synthetic"
    run_dir.mkdir()
    records = [
        _rpc("wsevents", 1, 100000, 1.2),
        _rpc("wsevents", 2, 90000, 0.9),
        _rpc("wsevents", 3, 120000, 1.0),
        _record("wsevents", "s1", 4, error="RuntimeError('server not ready within 30s')"),
        _rpc("limit-aiohttp", 1, 220000, 0.4),
        _rpc("limit-aiohttp", 2, 200000, 0.5),
        _rpc("limit-aiohttp", 3, 180000, 0.6),
        _memory("wsevents", "s3", 1, 16.0),
        _memory("wsevents", "s3", 2, 14.0),
        _memory("wsevents", "s3", 3, 15.0),
        _memory("limit-aiohttp", "s3", 1, 10.0),
        _memory("limit-aiohttp", "s3", 2, 10.0),
        _memory("limit-aiohttp", "s3", 3, 10.0),
        _fanout("wsevents", 10, 1, 30000, 2.0),
        _fanout("wsevents", 1000, 1, 150000, 0.6),
        _fanout("limit-aiohttp", 10, 1, 40000, 1.6),
        _fanout("limit-aiohttp", 1000, 1, 200000, 0.5),
        _memory("wsevents", "idle_500", 1, 14.0, series="idle", size=500),
        _memory("limit-aiohttp", "idle_500", 1, 12.5, series="idle", size=500),
    ]
    for rec in records:
        name = f"{rec['server']}.{rec['scenario']}.{rec['rep']}.json"
        (run_dir / name).write_text(json.dumps(rec))
    # The harness' settings file lists the servers, the peer first: wsevents must still lead.
    harness = {
        "servers": [{"name": "limit-aiohttp"}, {"name": "wsevents"}],
        "scenarios": ["s1", "s3"],
        "reps": 3,
        "warmup": 2,
        "duration": 8,
        "pinned": True,
        "server_cpu": "1",
        "client_cpu": "0",
    }
    (run_dir / "run.json").write_text(json.dumps(harness))
    return run_dir


def _render(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def _table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under the heading starting with ``heading``: rows by their first
    two cells joined (``"wsevents"`` or ``"10 wsevents"`` for series), cells by column."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
    header, rows = table[0], table[2:]
    series = header[0] != "server"
    return {
        (f"{row[0]} {row[1]}" if series else row[0]): dict(zip(header, row, strict=True))
        for row in rows
    }


def test_from_run_writes_medians_ranges_and_ratios(raw_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = _render("--from-run", raw_run, "--out", out, "--no-charts")

    assert done.returncode == 0, done.stderr
    text = (out / "summary.md").read_text()
    s1 = _table(text, "### s1")
    assert list(s1) == ["wsevents", "limit-aiohttp"]
    assert s1["wsevents"]["replies/s"] == "100000 (90000..120000)"
    assert s1["wsevents"]["srv CPU s/100k replies"] == "1 (0.9..1.2)"
    assert s1["wsevents"]["ok runs"].startswith("3/4 (RuntimeError")
    assert s1["limit-aiohttp"]["replies/s"] == "200000 (180000..220000)"
    assert s1["limit-aiohttp"]["srv CPU s/100k replies"] == "0.5 (0.4..0.6)"
    assert s1["limit-aiohttp"]["ratio replies/s"] == "0.50"
    assert s1["limit-aiohttp"]["ratio srv CPU s/100k replies"] == "2.00"
    assert s1["wsevents"]["ratio replies/s"] == "-"

    s3 = _table(text, "### s3")
    assert s3["wsevents"]["KB/conn"] == "15 (14..16)"
    assert s3["limit-aiohttp"]["KB/conn"] == "10 (10..10)"
    assert s3["limit-aiohttp"]["ratio KB/conn"] == "1.50"

    fanout = _table(text, "## Scaling: fan-out")
    assert list(fanout) == [
        "10 wsevents",
        "10 limit-aiohttp",
        "1000 wsevents",
        "1000 limit-aiohttp",
    ]
    assert fanout["1000 wsevents"]["deliveries/s"] == "150000"
    assert fanout["10 limit-aiohttp"]["ratio deliveries/s"] == "0.75"
    assert fanout["1000 limit-aiohttp"]["ratio srv CPU s/100k deliveries"] == "1.20"

    idle = _table(text, "## Scaling: memory")
    assert idle["500 limit-aiohttp"]["ratio KB/conn"] == "1.12"
    assert idle["500 wsevents"]["total RSS MB"] == "67.3"

    assert "s1 wsevents/limit-aiohttp=0.50 | s3 wsevents/limit-aiohttp=1.50" in text
    assert ".png" not in text


def test_from_run_draws_and_publishes_charts(raw_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, published = tmp_path / "out", tmp_path / "docs-img"

    done = _render("--from-run", raw_run, "--out", out, "--publish", "--publish-dir", published)

    assert done.returncode == 0, done.stderr
    charts = ["s1.png", "s3.png", "scaling_fanout.png", "scaling_idle.png"]
    text = (out / "summary.md").read_text()
    for name in charts:
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({name})" in text
        assert (published / name).read_bytes() == (out / name).read_bytes()
    assert (published / "summary.md").read_text() == text


def test_from_run_without_records_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "run.json").write_text("{}")

    done = _render("--from-run", empty, "--out", tmp_path / "out")

    assert done.returncode == 2
    assert "no run records" in done.stderr
    assert not (tmp_path / "out").exists()
