"""Render a raw benchmark run folder: ``summary.md`` (Markdown tables) and PNG charts.

A raw run folder holds one JSON record per run, named ``<server>.<scenario>.<rep>.json``,
as the harness writes them, plus ``run.json`` (the harness' settings) and, when
``run.py`` made the run, ``benchmarks.json`` (its settings and the software versions).

This module needs only the standard library (and matplotlib for the charts): a run can be
re-rendered anywhere, without the harness or its load generator.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXED_SCENARIOS = ("s1", "s2_100", "s2_1000", "s3", "s4")
SERIES = ("fanout", "idle")

FIXED_DESCRIPTIONS = {
    "s1": "RPC: 50 connections x 10 `rpc /echo` in flight (~100-byte JSON object)",
    "s2_100": "fan-out: 100 subscribers in one room, one publisher keeps 4 broadcasts in flight",
    "s2_1000": "fan-out: 1000 subscribers in one room, one publisher keeps 4 broadcasts in flight",
    "s3": "memory: 2000 idle connections, each subscribed to one of 20 rooms",
    "s4": "connection rate: 2000 x (connect + handshake + first `rpc /echo` + close), 20 at a time",
}

Record = dict[str, Any]
Getter = Callable[[Record], float | None]


def _get(rec: Record, *path: str) -> Any:
    value: Any = rec
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scaled(getter: Getter, factor: float) -> Getter:
    def get(rec: Record) -> float | None:
        value = getter(rec)
        return None if value is None else value * factor

    return get


def _field(*path: str) -> Getter:
    return lambda rec: _num(_get(rec, *path))


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of a run record."""

    label: str
    get: Getter
    higher_is_better: bool | None = None  # None: context only, no ratio

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            return ""
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass(frozen=True, slots=True)
class Spec:
    """What a scenario's table and chart show: key figure, cost figure, context columns."""

    key: Metric
    cost: Metric
    extras: tuple[Metric, ...] = ()


_SRV_CPU_PCT = Metric("srv CPU %", _field("server_cpu_pct"))
_CLI_CPU_PCT = Metric("cli CPU %", _field("result", "client_cpu_pct"))
_REPLIES = Metric("replies/s", _field("result", "replies_per_s"), True)
_DELIVERIES = Metric("deliveries/s", _field("result", "deliveries_per_s"), True)
_CPU_100K_REPLIES = Metric("srv CPU s/100k replies", _field("server_cpu_s_per_100k"), False)
_CPU_100K_DELIVERIES = Metric("srv CPU s/100k deliveries", _field("server_cpu_s_per_100k"), False)
_KB_PER_CONN = Metric("KB/conn", _field("kb_per_conn"), False)
_RSS_MB = Metric("total RSS MB", _scaled(_field("rss_after_kb"), 1 / 1024), False)
_RSS_IDLE_MB = Metric("RSS idle MB", _scaled(_field("rss_before_kb"), 1 / 1024))

_FANOUT = Spec(
    _DELIVERIES,
    _CPU_100K_DELIVERIES,
    (Metric("p99 ms", _field("result", "latency", "p99_ms")), _SRV_CPU_PCT, _CLI_CPU_PCT),
)
_IDLE = Spec(_KB_PER_CONN, _RSS_MB, (_RSS_IDLE_MB,))

SPECS: dict[str, Spec] = {
    "s1": Spec(
        _REPLIES,
        _CPU_100K_REPLIES,
        (Metric("p99 ms", _field("result", "latency", "p99_ms")), _SRV_CPU_PCT, _CLI_CPU_PCT),
    ),
    "s2": _FANOUT,
    "s3": _IDLE,
    "s4": Spec(
        Metric("conns/s", _field("result", "conns_per_s"), True),
        Metric("srv CPU ms/conn", _scaled(_field("server_cpu_s_per_100k"), 1 / 100), False),
        (
            Metric("p99 ms", _field("result", "handshake_latency", "p99_ms")),
            _SRV_CPU_PCT,
            _CLI_CPU_PCT,
        ),
    ),
    "fanout": _FANOUT,
    "idle": _IDLE,
}


def spec_of(scenario: str) -> Spec | None:
    """The spec of a fixed scenario (``s2_1000``) or a series point (``fanout_5000``)."""
    base = scenario.split("_", 1)[0]
    return SPECS.get(base)


def series_of(rec: Record) -> tuple[str, int] | None:
    """``("fanout", 1000)`` for a record of a scaling series, else None."""
    name, _, size = str(rec.get("scenario", "")).partition("_")
    if name not in SERIES:
        return None
    value = rec.get("size")
    if isinstance(value, int) and not isinstance(value, bool):
        return name, value
    return (name, int(size)) if size.isdigit() else None


# ── loading ───────────────────────────────────────────────────────────────────
@dataclass(slots=True)
class Run:
    """A loaded raw run folder."""

    name: str
    records: list[Record]
    harness: dict[str, Any]  # run.json
    meta: dict[str, Any]  # benchmarks.json

    @property
    def servers(self) -> list[str]:
        """Server names: the subject first, then the run's order, then any others."""
        order: list[str] = [self.subject]
        for source in (self.meta.get("servers"), self.harness.get("servers")):
            for server in source or ():
                if isinstance(server, dict) and isinstance(server.get("name"), str):
                    order.append(server["name"])
        order += [str(rec.get("server")) for rec in self.records]
        present = {rec.get("server") for rec in self.records}
        return [name for name in dict.fromkeys(order) if name in present]

    @property
    def subject(self) -> str:
        """The server the ratios are about (wsevents unless the run says otherwise)."""
        subject = self.meta.get("subject")
        if isinstance(subject, str):
            return subject
        names = [str(rec.get("server")) for rec in self.records]
        if "wsevents" in names:
            return "wsevents"
        servers = self.harness.get("servers") or []
        if servers and isinstance(servers[0], dict) and isinstance(servers[0].get("name"), str):
            return str(servers[0]["name"])
        return names[0] if names else "wsevents"


def load_run(run_dir: Path) -> Run:
    """Read every ``<server>.<scenario>.<rep>.json`` record of a raw run folder.

    Raises:
        FileNotFoundError: the folder does not exist or holds no record.
    """
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    records: list[Record] = []
    for path in sorted(run_dir.glob("*.json")):
        if path.name.count(".") != 3:  # run.json, benchmarks.json
            continue
        with path.open() as f:
            rec = json.load(f)
        if isinstance(rec, dict) and "server" in rec and "scenario" in rec:
            records.append(rec)
    if not records:
        raise FileNotFoundError(f"no run records (<server>.<scenario>.<rep>.json) in {run_dir}")

    def read(name: str) -> dict[str, Any]:
        path = run_dir / name
        if not path.exists():
            return {}
        with path.open() as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}

    return Run(run_dir.name, records, read("run.json"), read("benchmarks.json"))


# ── statistics and formatting ────────────────────────────────────────────────
def is_ok(rec: Record, spec: Spec) -> bool:
    """A run counts when it has no error and produced its key figure."""
    return (
        not rec.get("error") and not _get(rec, "result", "error") and spec.key.get(rec) is not None
    )


@dataclass(frozen=True, slots=True)
class Stat:
    median: float
    low: float
    high: float
    n: int


def stat(values: Iterable[float | None]) -> Stat | None:
    """Median, min and max of the values that exist."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Stat(statistics.median(present), min(present), max(present), len(present))


def fmt(value: float | None) -> str:
    """Three significant digits below 100, whole numbers above."""
    if value is None:
        return "-"
    if abs(value) >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_stat(s: Stat | None) -> str:
    if s is None:
        return "-"
    if s.n == 1:
        return fmt(s.median)
    return f"{fmt(s.median)} ({fmt(s.low)}..{fmt(s.high)})"


def ratio(a: Stat | None, b: Stat | None) -> float | None:
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@dataclass(slots=True)
class Cell:
    """The statistics of one (scenario, server)."""

    key: Stat | None
    cost: Stat | None
    extras: list[Stat | None]
    ok: int
    total: int
    bad: int  # bad replies + lost broadcasts over the good runs
    error: str


def cell(records: list[Record], spec: Spec) -> Cell:
    good = [r for r in records if is_ok(r, spec)]
    failed = [r for r in records if not is_ok(r, spec)]
    bad = 0
    for r in good:
        for key in ("bad_replies", "lost"):
            value = _get(r, "result", key)
            bad += value if isinstance(value, int) else 0
    error = ""
    if failed:
        reason = failed[0].get("error") or _get(failed[0], "result", "error") or "no key figure"
        error = str(reason).splitlines()[0][:80]
    return Cell(
        stat(spec.key.get(r) for r in good),
        stat(spec.cost.get(r) for r in good),
        [stat(m.get(r) for r in good) for m in spec.extras],
        len(good),
        len(records),
        bad,
        error,
    )


def _ok_note(c: Cell) -> str:
    note = f"{c.ok}/{c.total}"
    if c.bad:
        note += f", bad/lost {c.bad}"
    if c.error:
        note += f" ({c.error})".replace("|", "/")
    return note


# ── summary ──────────────────────────────────────────────────────────────────
@dataclass(slots=True)
class Summary:
    """Everything the tables and charts show, per scenario and server."""

    run: Run
    fixed: dict[str, dict[str, Cell]]  # scenario -> server -> cell
    series: dict[str, dict[int, dict[str, Cell]]]  # series -> size -> server -> cell


def summarize(run: Run) -> Summary:
    fixed: dict[str, dict[str, Cell]] = {}
    series: dict[str, dict[int, dict[str, Cell]]] = {}
    for scenario in FIXED_SCENARIOS:
        spec = spec_of(scenario)
        assert spec is not None
        row = {}
        for server in run.servers:
            recs = [r for r in run.records if r["server"] == server and r["scenario"] == scenario]
            if recs:
                row[server] = cell(recs, spec)
        if row:
            fixed[scenario] = row
    points: dict[tuple[str, int], list[Record]] = {}
    for rec in run.records:
        point = series_of(rec)
        if point is not None:
            points.setdefault(point, []).append(rec)
    for (name, size), recs in sorted(points.items()):
        spec = SPECS[name]
        row = {}
        for server in run.servers:
            mine = [r for r in recs if r["server"] == server]
            if mine:
                row[server] = cell(mine, spec)
        series.setdefault(name, {})[size] = row
    return Summary(run, fixed, series)


def _versions_section(meta: dict[str, Any]) -> list[str]:
    versions = meta.get("versions")
    if not isinstance(versions, dict) or not versions:
        return []
    out = ["## Versions", "", "| | |", "| --- | --- |"]
    for key, value in versions.items():
        out.append(f"| {key} | {value} |")
    return [*out, ""]


def _settings_line(run: Run) -> str:
    src = run.meta or run.harness
    parts = []
    for key in ("reps", "warmup", "duration"):
        if key in src:
            parts.append(f"{key} {src[key]}")
    if "pinned" in src:
        if src["pinned"]:
            server_cpu, client_cpu = src.get("server_cpu"), src.get("client_cpu")
            parts.append(f"server pinned to CPU {server_cpu}, load generator to CPU {client_cpu}")
        else:
            parts.append("not pinned")
    return ", ".join(parts)


def _fixed_table(scenario: str, row: dict[str, Cell], subject: str) -> list[str]:
    spec = spec_of(scenario)
    assert spec is not None
    key, cost = spec.key, spec.cost
    head = [
        "server",
        key.label,
        cost.label,
        *[m.label for m in spec.extras],
        f"ratio {key.label}",
        f"ratio {cost.label}",
        "ok runs",
    ]
    out = [
        f"### {scenario}: {key.label} ({key.direction}), {cost.label} ({cost.direction})",
        "",
        FIXED_DESCRIPTIONS.get(scenario, ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    mine = row.get(subject)
    for server, c in row.items():
        same = server == subject
        cells = [
            server,
            fmt_stat(c.key),
            fmt_stat(c.cost),
            *[fmt_stat(s) for s in c.extras],
            "-" if same or mine is None else fmt_ratio(ratio(mine.key, c.key)),
            "-" if same or mine is None else fmt_ratio(ratio(mine.cost, c.cost)),
            _ok_note(c),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


_SERIES_TEXT = {
    "fanout": (
        "## Scaling: fan-out cost as the room grows",
        "members",
        "N subscribers in one room, one publisher (not a member) keeps 4 `message-all` "
        "broadcasts in flight.",
    ),
    "idle": (
        "## Scaling: memory as idle connections grow",
        "connections",
        "N idle connections, each subscribed to one of 20 rooms; RSS of the server's process "
        "tree before and after.",
    ),
}


def _series_table(name: str, points: dict[int, dict[str, Cell]], subject: str) -> list[str]:
    spec = SPECS[name]
    title, size_label, text = _SERIES_TEXT[name]
    key, cost = spec.key, spec.cost
    head = [
        size_label,
        "server",
        key.label,
        cost.label,
        *[m.label for m in spec.extras],
        f"ratio {key.label}",
        f"ratio {cost.label}",
        "ok runs",
    ]
    out = [
        title,
        "",
        f"{text} {key.label}: {key.direction}; {cost.label}: {cost.direction}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for size, row in points.items():
        mine = row.get(subject)
        for server, c in row.items():
            same = server == subject
            cells = [
                str(size),
                server,
                fmt_stat(c.key),
                fmt_stat(c.cost),
                *[fmt_stat(s) for s in c.extras],
                "-" if same or mine is None else fmt_ratio(ratio(mine.key, c.key)),
                "-" if same or mine is None else fmt_ratio(ratio(mine.cost, c.cost)),
                _ok_note(c),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def key_line(summary: Summary) -> str:
    """``s1 wsevents/limit-aiohttp=0.83 ... | s2_1000 ...``: ratios of the key figure."""
    subject = summary.run.subject
    parts = []
    for scenario, row in summary.fixed.items():
        mine = row.get(subject)
        items = [
            f"{subject}/{server}={fmt_ratio(ratio(mine.key if mine else None, c.key))}"
            for server, c in row.items()
            if server != subject
        ]
        if items:
            parts.append(f"{scenario} " + " ".join(items))
    return " | ".join(parts)


def render_markdown(summary: Summary, charts: list[str]) -> str:
    run = summary.run
    subject = run.subject
    out = [f"# Benchmark run {run.name}", ""]
    settings = _settings_line(run)
    out += [
        "Every cell is the median over reps and (min..max). A ratio is the median of "
        f"{subject} divided by the median of the row's server, both from this run: above 1 "
        f"favours {subject} for a higher-is-better figure, below 1 for a lower-is-better one.",
        "",
    ]
    if settings:
        out += [f"Settings: {settings}.", ""]
    command = run.meta.get("command")
    if isinstance(command, str):
        out += ["```sh", command, "```", ""]
    out += _versions_section(run.meta)
    line = key_line(summary)
    if line:
        out += ["## Key figures", "", "```", line, "```", ""]
    if summary.fixed:
        out += ["## Scenarios", ""]
        for scenario, row in summary.fixed.items():
            out += _fixed_table(scenario, row, subject)
            if f"{scenario}.png" in charts:
                out += [f"![{scenario}]({scenario}.png)", ""]
    for name, points in summary.series.items():
        out += _series_table(name, points, subject)
        if f"scaling_{name}.png" in charts:
            out += [f"![scaling {name}](scaling_{name}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


# ── charts ───────────────────────────────────────────────────────────────────
def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _errors(stats: list[Stat | None]) -> list[list[float]]:
    return [
        [(s.median - s.low) if s else 0.0 for s in stats],
        [(s.high - s.median) if s else 0.0 for s in stats],
    ]


def render_charts(summary: Summary, out_dir: Path) -> list[str]:
    """Write one PNG per fixed scenario and per scaling series; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors
    colors = {name: palette[i % len(palette)] for i, name in enumerate(summary.run.servers)}
    written: list[str] = []

    for scenario, row in summary.fixed.items():
        spec = spec_of(scenario)
        assert spec is not None
        names = list(row)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric, pick in (
            (axes[0], spec.key, lambda c: c.key),
            (axes[1], spec.cost, lambda c: c.cost),
        ):
            stats = [pick(row[n]) for n in names]
            heights = [s.median if s else 0.0 for s in stats]
            bars = ax.bar(
                names,
                heights,
                yerr=_errors(stats),
                capsize=4,
                color=[colors[n] for n in names],
            )
            ax.bar_label(bars, labels=[fmt(s.median if s else None) for s in stats], padding=2)
            ax.set_title(f"{metric.label} ({metric.direction})", fontsize=10)
            ax.tick_params(axis="x", labelrotation=20)
            ax.margins(y=0.15)
        fig.suptitle(f"{scenario}: median, error bars min..max", fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / f"{scenario}.png", dpi=110)
        plt.close(fig)
        written.append(f"{scenario}.png")

    for name, points in summary.series.items():
        spec = SPECS[name]
        size_label = _SERIES_TEXT[name][1]
        sizes = list(points)
        servers = [s for s in summary.run.servers if any(s in row for row in points.values())]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric, pick in (
            (axes[0], spec.key, lambda c: c.key),
            (axes[1], spec.cost, lambda c: c.cost),
        ):
            for server in servers:
                xs = [x for x in sizes if server in points[x] and pick(points[x][server])]
                stats = [pick(points[x][server]) for x in xs]
                if not xs:
                    continue
                ax.errorbar(
                    xs,
                    [s.median for s in stats if s],
                    yerr=_errors(stats),
                    marker="o",
                    capsize=3,
                    label=server,
                    color=colors[server],
                )
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(x) for x in sizes])
            ax.minorticks_off()
            ax.set_xlabel(size_label)
            ax.set_title(f"{metric.label} ({metric.direction})", fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(_SERIES_TEXT[name][0].removeprefix("## "), fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / f"scaling_{name}.png", dpi=110)
        plt.close(fig)
        written.append(f"scaling_{name}.png")
    return written


def render(run_dir: Path, out_dir: Path, *, charts: bool = True) -> tuple[Path, list[str]]:
    """Write ``summary.md`` (and the charts) of a raw run folder into ``out_dir``.

    Returns:
        The summary's path and the chart file names (empty when charts are off or
        matplotlib is missing).
    """
    summary = summarize(load_run(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = render_charts(summary, out_dir) if charts and have_matplotlib() else []
    path = out_dir / "summary.md"
    path.write_text(render_markdown(summary, written))
    return path, written
