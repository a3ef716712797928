"""benchmarks/tracing_cost.py: its table from run records (no benchmark runs here), and the
traced servers it measures answer the load generator's echo and make (or skip) spans."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from examples import reference_app

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tracing_cost.py"
PAYLOAD = {"user": "alice", "room": "bench", "text": "hello", "n": 1, "ok": True, "tags": []}


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracing_bench", SCRIPT)
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


def test_table_gives_medians_and_ratios_to_tracing_off() -> None:
    text, medians = load().table(
        [
            record("tracing-off", 1.0),
            record("tracing-off", 3.0),
            record("tracing-off", 2.0),
            record("tracing-unsampled", 2.2),
            record("tracing-sampled", 4.0, rate=500.0),
            record("tracing-sampled", None, error="loadgen exit 1"),
        ]
    )
    assert medians == {"tracing-off": 2.0, "tracing-unsampled": 2.2, "tracing-sampled": 4.0}
    assert "| tracing-unsampled | 1 | 2.200 | 1.100 | 1000 |" in text
    assert "| tracing-sampled | 1 | 4.000 | 2.000 | 500 |" in text


def test_table_marks_a_server_without_records_as_failed() -> None:
    text, medians = load().table([record("tracing-off", 1.0)])
    assert "| tracing-sampled | 0 | failed | | |" in text
    assert medians == {"tracing-off": 1.0}


def test_a_missing_harness_is_status_2(tmp_path: Path) -> None:
    assert load().main(["--bench-dir", str(tmp_path)]) == 2


async def test_traced_servers_echo_and_sample_as_named(ws_client: Any) -> None:
    from benchmarks import tracing_app

    for sampler, spans in ((ALWAYS_ON, 3), (ALWAYS_OFF, 0)):
        app, provider, exporter = tracing_app.traced(sampler)
        assert app is not reference_app.app and not reference_app.app.tracing_enabled
        client = await ws_client(app)
        for n in range(3):
            reply = await client.request("rpc", "/echo", PAYLOAD, message_id=n)
            assert reply == {"id": n, "data": PAYLOAD}
        await asyncio.to_thread(provider.force_flush)
        assert exporter.exported == spans
        provider.shutdown()


def test_the_ratio_server_samples_one_trace_in_a_hundred() -> None:
    from benchmarks import tracing_app

    app = tracing_app.ratio()
    assert app is not reference_app.app and app.tracing_enabled
    tracer = app._dispatcher._tracing.tracer  # type: ignore[union-attr]
    assert "TraceIdRatioBased{0.01}" in tracer.sampler.get_description()
