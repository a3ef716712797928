"""What tracing costs: server CPU per 100k RPC replies with tracing off and on.

Four servers, each started fresh per rep and measured with the harness' scenario ``s1``
(50 connections x 10 ``rpc /echo`` in flight, a ~100-byte object), reps interleaved:

* ``tracing-off``: the reference app as it is (OpenTelemetry not even imported);
* ``tracing-unsampled``: tracing on, nothing sampled (``benchmarks/tracing_app.py``);
* ``tracing-sampled``: tracing on, every message sampled, spans batched to an exporter
  that drops them (the SDK's whole work, without the network);
* ``tracing-ratio-1%``: tracing on, 1 % of the traces sampled (``parentbased_traceidratio``,
  what the tracing guide recommends for busy servers), exported the same way.

The key figure is the server's CPU seconds per 100k replies (lower is better), compared
with ``tracing-off`` from the same run; the issue's target is ``tracing-sampled /
tracing-off <= 1.10``. Run from the project root, on a quiet machine:

    python benchmarks/tracing_cost.py                 # 3 reps of 2 + 8 s per server (~2 min)
    python benchmarks/tracing_cost.py --reps 1 --warmup 1 --duration 2   # a quick check

The harness (``bench.py``, ``loadgen.js``) is ``../shared/bench`` unless ``--bench-dir`` or
``$WSEVENTS_BENCH_DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _servers import add_harness_paths, harness_records, s1_samples, wsevents_run  # noqa: E402  (benchmarks/ is not a package)

BASE = "tracing-off"
SERVERS = {
    BASE: "examples.reference_app:app",
    "tracing-unsampled": "benchmarks.tracing_app:unsampled",
    "tracing-sampled": "benchmarks.tracing_app:sampled",
    "tracing-ratio-1%": "benchmarks.tracing_app:ratio",
}
TARGET = 1.10


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved reps per server")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=60.0, help="kill a load run after this")
    add_harness_paths(p)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    return p


def table(records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """A Markdown table of median CPU s/100k replies and replies/s per server, with ratios
    to ``tracing-off``; also the medians of CPU s/100k by server."""
    cpu, rate = s1_samples(records)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians.get(BASE)
    lines = [
        f"| server | reps | srv CPU s/100k replies | ratio to {BASE} | replies/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in SERVERS:
        if name not in medians:
            lines.append(f"| {name} | 0 | failed | | |")
            continue
        ratio = f"{medians[name] / base:.3f}" if base else "n/a"
        replies = f"{statistics.median(rate[name]):.0f}" if rate.get(name) else "n/a"
        lines.append(f"| {name} | {len(cpu[name])} | {medians[name]:.3f} | {ratio} | {replies} |")
    return "\n".join(lines), medians


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    records = harness_records(
        "tracing_cost.py",
        a,
        {name: wsevents_run(target) for name, target in SERVERS.items()},
        label="tracing",
    )
    if isinstance(records, int):
        return records
    text, medians = table(records)
    print("\nServer CPU per 100k RPC replies (median over reps; lower is better)\n")
    print(text)
    if BASE in medians and "tracing-sampled" in medians:
        ratio = medians["tracing-sampled"] / medians[BASE]
        verdict = "within" if ratio <= TARGET else "OVER"
        print(f"\ntracing-sampled/{BASE} = {ratio:.3f} ({verdict} the {TARGET:.2f} target)")
    return 0 if len(medians) == len(SERVERS) else 1


if __name__ == "__main__":
    sys.exit(main())
