"""Prometheus metrics of one [`WsApp`][wsevents.WsApp] (``pip install "wsevents[metrics]"``).

The hot path never touches ``prometheus-client``: the dispatcher, the adapter and the
cluster count in plain integers (per route, in a [`RouteStats`][] the dispatcher attaches
to each endpoint once, when metrics are enabled), and [`Metrics.collect`][] turns them into
metric families when Prometheus scrapes. A broadcast adds its deliveries once, not once
per member. Metrics are off until [`WsApp.enable_metrics`][wsevents.WsApp.enable_metrics]:
then a message costs two clock reads and a few integer additions more.

Labels have bounded cardinality: ``route`` is the route *pattern* (``/chat/rooms/:room``)
and ``event`` the route's event; a message no route matches counts under
[`UNMATCHED`][] for both, whatever its path. Close codes sent by clients outside the
standard range count as ``"other"``, and so do reply codes outside 100 to 599.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the counters are also written to
``prometheus-client``'s multi-process files every [`SYNC_INTERVAL`][] seconds, so that one
scrape answers for every process of a server.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import WsApp

__all__ = [
    "DEFAULT_BUCKETS",
    "HANDSHAKE_REFUSALS",
    "SPECS",
    "SYNC_INTERVAL",
    "UNMATCHED",
    "Metrics",
    "RouteStats",
]

UNMATCHED = "<unmatched>"
"""The ``event`` and ``route`` label of messages no route matches (404, or the
``on_unhandled`` fallback)."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the handler duration histogram: 100 µs to 10 s."""

HANDSHAKE_REFUSALS = ("origin", "rate_limit", "shutting_down", "subprotocol")
"""Why the adapter may refuse an upgrade before the handshake (a ``reason`` label)."""

_REFUSALS = (*HANDSHAKE_REFUSALS, "on_connect", "max_per_user")


def reply_code_label(code: int) -> str:
    """The ``code`` label of a reply: the code itself from 100 to 599, else ``"other"``."""
    return str(code) if 100 <= code <= 599 else "other"


def close_code_label(code: int, by_server: bool) -> str:
    """The ``code`` label of a close: a code the server sent as it is; a client's from the
    standard range (1000 to 1015) or ``"other"`` (a client picks any code it likes)."""
    if by_server or 1000 <= code <= 1015:
        return str(code)
    return "other"


class RouteStats:
    """What one route (or every unmatched message) has counted.

    The dispatcher writes the attributes directly; every count only grows.

    Attributes:
        event: the ``event`` label.
        route: the ``route`` label (the route pattern).
        bounds: the histogram's upper bounds (shared by every route of the app).
        first: the first bound.
        buckets: handler runs per bucket (not cumulative; the last one is ``+Inf``).
        seconds: the total of the handler durations.
        unobserved: messages counted without a duration (404 replies, and idempotent calls
            answered with a kept reply or refused by the session store).
        errors: error replies by ``code`` label.
        no_reply: messages handled without a reply (no ``id``).
        rate_limited: messages refused by a rate limit (429).
    """

    __slots__ = (
        "bounds",
        "buckets",
        "errors",
        "event",
        "first",
        "no_reply",
        "rate_limited",
        "route",
        "seconds",
        "unobserved",
    )

    def __init__(self, event: str, route: str, bounds: tuple[float, ...]) -> None:
        self.event = event
        self.route = route
        self.bounds = bounds
        self.first = bounds[0]
        self.buckets = [0] * (len(bounds) + 1)
        self.seconds = 0.0
        self.unobserved = 0
        self.errors: dict[str, int] = {}
        self.no_reply = 0
        self.rate_limited = 0

    def observe(self, seconds: float) -> None:
        """Count one handler run of ``seconds``."""
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.seconds += seconds

    def error(self, code: int) -> None:
        """Count one error reply with ``code``."""
        label = reply_code_label(code)
        self.errors[label] = self.errors.get(label, 0) + 1

    @property
    def received(self) -> int:
        """Messages counted (handler runs and 404s)."""
        return sum(self.buckets) + self.unobserved

    @property
    def replies(self) -> dict[str, int]:
        """Replies sent by ``code`` label (``"200"``: a reply with ``data``)."""
        out = {"200": self.received - self.no_reply - sum(self.errors.values())}
        out.update(self.errors)
        return out


class Metrics:
    """The counters of one [`WsApp`][wsevents.WsApp], as Prometheus metrics.

    Made by [`WsApp.enable_metrics`][wsevents.WsApp.enable_metrics]; it is a
    ``prometheus_client`` collector (register it with ``registry.register(metrics)``;
    ``enable_metrics`` does). Read the counts in Python through the attributes and
    [`samples`][].

    Attributes:
        opened: connections accepted.
        closed: closed connections by ``(code label, by)``, ``by`` being ``"server"`` or
            ``"client"``.
        refused: refused connections by reason (see the monitoring guide).
        invalid_frames: frames dropped because they do not parse.
        slow_consumers: connections closed because their send buffer overflowed.
        handshakes_rate_limited: upgrades refused with HTTP 429 by ``handshake_rate``.
        unmatched: the [`RouteStats`][] of messages no route matches.
    """

    def __init__(self, app: WsApp, *, buckets: Sequence[float] | None = None) -> None:
        bounds = tuple(sorted(float(b) for b in (buckets or DEFAULT_BUCKETS)))
        if not bounds or any(b <= 0 for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct positive numbers of seconds")
        self.bounds = bounds
        self._app = app
        self.opened = 0
        self.closed: dict[tuple[str, str], int] = {}
        self.refused: dict[str, int] = dict.fromkeys(_REFUSALS, 0)
        self.invalid_frames = 0
        self.slow_consumers = 0
        self.handshakes_rate_limited = 0
        self.unmatched = RouteStats(UNMATCHED, UNMATCHED, bounds)
        self._routes: dict[tuple[str, str], RouteStats] = {}
        self._mirror: _Mirror | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._mirror = _Mirror(require_prometheus_client(), bounds)

    def route(self, event: str, pattern: str) -> RouteStats:
        """The [`RouteStats`][] of the route ``event pattern`` (made on first use)."""
        key = (event, pattern)
        stats = self._routes.get(key)
        if stats is None:
            stats = self._routes[key] = RouteStats(event, pattern, self.bounds)
        return stats

    def routes(self) -> tuple[RouteStats, ...]:
        """Every route's stats, then the unmatched messages'."""
        return (*self._routes.values(), self.unmatched)

    # -- what the adapter reports ---------------------------------------------------------

    def connection_opened(self) -> None:
        """A connection was accepted."""
        self.opened += 1

    def connection_closed(self, code: int, *, by_server: bool, slow_consumer: bool) -> None:
        """An accepted connection closed with ``code``."""
        key = (close_code_label(code, by_server), "server" if by_server else "client")
        self.closed[key] = self.closed.get(key, 0) + 1
        if slow_consumer:
            self.slow_consumers += 1

    def connection_refused(self, reason: str) -> None:
        """A connection was refused (before or after the handshake) for ``reason``."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if reason == "rate_limit":
            self.handshakes_rate_limited += 1

    # -- export ---------------------------------------------------------------------------

    def samples(self) -> dict[str, Any]:
        """Every count as plain values: ``{metric name: value or {labels: value}}`` (what
        [`collect`][] exports, without ``prometheus_client``).

        Safe to call from another thread (``prometheus_client.start_http_server``): it
        copies the counters with single C-level calls (``dict()``, ``tuple()``, ``sum()``)
        that the event loop cannot interleave with.
        """
        app = self._app
        cluster = app.rooms.cluster
        deliveries = cluster.deliveries
        received: dict[tuple[str, str], int] = {}
        replies: dict[tuple[str, str, str], int] = {}
        limited = 0
        for stats in self.routes():
            received[stats.event, stats.route] = stats.received
            for code, count in stats.replies.items():
                replies[stats.event, stats.route, code] = count
            limited += stats.rate_limited
        return {
            "wsevents_connections": len(app.server.connections()),
            "wsevents_connections_opened_total": self.opened,
            "wsevents_connections_closed_total": dict(self.closed),
            "wsevents_connections_refused_total": dict(self.refused),
            "wsevents_messages_received_total": received,
            "wsevents_messages_invalid_total": self.invalid_frames,
            "wsevents_replies_total": replies,
            "wsevents_pushes_delivered_total": deliveries.delivered,
            "wsevents_pushes_dropped_total": {
                "slow_consumer": deliveries.dropped_slow,
                "closed": deliveries.dropped_closed,
            },
            "wsevents_slow_consumers_closed_total": self.slow_consumers,
            "wsevents_rate_limit_rejections_total": {
                "message": limited,
                "handshake": self.handshakes_rate_limited,
            },
            "wsevents_rooms": len(app.rooms.rooms()),
            "wsevents_transport_up": 1 if app.transport_up else 0,
            "wsevents_transport_publishes_total": cluster.publishes,
            "wsevents_transport_publish_errors_total": cluster.publish_errors,
        }

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (``prometheus_client`` calls it at every scrape)."""
        core = importlib.import_module("prometheus_client.core")
        families = {"gauge": core.GaugeMetricFamily, "counter": core.CounterMetricFamily}
        samples = self.samples()
        for name, kind, text, labels in SPECS:
            if kind == "histogram":
                histogram = core.HistogramMetricFamily(name, text, labels=list(labels))
                for stats in self.routes():
                    cumulative, total = [], 0
                    bounds = (*self.bounds, float("inf"))
                    for bound, count in zip(bounds, stats.buckets, strict=True):
                        total += count
                        cumulative.append((_le(bound), total))
                    histogram.add_metric([stats.event, stats.route], cumulative, stats.seconds)
                yield histogram
                continue
            value = samples[name]
            if not labels:
                yield families[kind](name.removesuffix("_total"), text, value=value)
                continue
            family = families[kind](name.removesuffix("_total"), text, labels=list(labels))
            for key, count in value.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
            yield family

    def describe(self) -> Iterator[Any]:
        """The metric families, for registration (values do not matter there)."""
        return self.collect()

    # -- several processes ----------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        """True when the counters are also written to ``PROMETHEUS_MULTIPROC_DIR`` (see
        [`sync`][])."""
        return self._mirror is not None

    def sync(self) -> None:
        """Write what was counted since the last call to ``prometheus-client``'s
        multi-process files (nothing without ``PROMETHEUS_MULTIPROC_DIR``).

        The app calls it every [`SYNC_INTERVAL`][] seconds while it runs, when it stops, and
        ``/metrics`` before every scrape it serves.
        """
        if self._mirror is not None:
            self._mirror.sync(self)

    async def run_sync(self) -> None:
        """Call [`sync`][] every [`SYNC_INTERVAL`][] seconds, until cancelled."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            self.sync()


SYNC_INTERVAL = 1.0
"""Seconds between two writes of the counters to the multi-process files."""

# name, type, help, labels: what is exported, in this order.
SPECS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("wsevents_connections", "gauge", "Open WebSocket connections.", ()),
    ("wsevents_connections_opened_total", "counter", "Connections accepted.", ()),
    (
        "wsevents_connections_closed_total",
        "counter",
        "Connections closed, by close code and by which side closed.",
        ("code", "by"),
    ),
    (
        "wsevents_connections_refused_total",
        "counter",
        "Connections refused, by reason.",
        ("reason",),
    ),
    (
        "wsevents_messages_received_total",
        "counter",
        "Messages received, by event and route pattern.",
        ("event", "route"),
    ),
    ("wsevents_messages_invalid_total", "counter", "Frames dropped as malformed.", ()),
    (
        "wsevents_replies_total",
        "counter",
        "RPC replies sent, by event, route pattern and code (200: data).",
        ("event", "route", "code"),
    ),
    (
        "wsevents_handler_duration_seconds",
        "histogram",
        "Time from dispatch to the handler's result, by event and route pattern.",
        ("event", "route"),
    ),
    ("wsevents_pushes_delivered_total", "counter", "Pushes written to local connections.", ()),
    (
        "wsevents_pushes_dropped_total",
        "counter",
        "Pushes not written, by reason (slow_consumer, closed).",
        ("reason",),
    ),
    (
        "wsevents_slow_consumers_closed_total",
        "counter",
        "Connections closed because their send buffer overflowed.",
        (),
    ),
    (
        "wsevents_rate_limit_rejections_total",
        "counter",
        "Messages (429 replies) and upgrades refused by rate limits.",
        ("kind",),
    ),
    ("wsevents_rooms", "gauge", "Rooms with a member on this instance.", ()),
    (
        "wsevents_transport_up",
        "gauge",
        "1 while the transport reaches its backend, else 0.",
        (),
    ),
    (
        "wsevents_transport_publishes_total",
        "counter",
        "Envelopes published to the transport.",
        (),
    ),
    ("wsevents_transport_publish_errors_total", "counter", "Publishes that failed.", ()),
)

# How each gauge adds up over processes: connections and rooms are summed over the live
# processes; the transport is up only when it is up in every one of them.
_GAUGE_MODES = {
    "wsevents_connections": "livesum",
    "wsevents_rooms": "livesum",
    "wsevents_transport_up": "livemin",
}


class _Mirror:
    """``prometheus-client`` metrics in multi-process mode, fed with the counters' deltas.

    Their values live in files under ``PROMETHEUS_MULTIPROC_DIR`` that every process of a
    server writes and the one answering a scrape reads (``MultiProcessCollector``).
    """

    def __init__(self, prometheus: Any, bounds: tuple[float, ...]) -> None:
        # A registry of their own: in multi-process mode, what counts is the files.
        registry = prometheus.CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        for name, kind, text, labels in SPECS:
            base = name.removesuffix("_total")
            if kind == "counter":
                metric = prometheus.Counter(base, text, labels, registry=registry)
            elif kind == "gauge":
                metric = prometheus.Gauge(
                    base, text, labels, registry=registry, multiprocess_mode=_GAUGE_MODES[name]
                )
            else:
                metric = prometheus.Histogram(base, text, labels, registry=registry, buckets=bounds)
            self._metrics[name] = metric
        self._last: dict[tuple[str, Any], float] = {}

    def sync(self, metrics: Metrics) -> None:
        samples = metrics.samples()
        last = self._last
        for name, kind, _, labels in SPECS:
            metric = self._metrics[name]
            if kind == "histogram":
                for stats in metrics.routes():
                    self._sync_histogram(metric.labels(stats.event, stats.route), stats)
                continue
            values = samples[name] if labels else {(): samples[name]}
            for key, value in values.items():
                child = metric.labels(*_tuple(key)) if labels else metric
                if kind == "gauge":
                    child.set(value)
                    continue
                delta = value - last.get((name, key), 0)
                if delta:
                    child.inc(delta)
                    last[name, key] = value

    def _sync_histogram(self, child: Any, stats: RouteStats) -> None:
        # prometheus-client has no public way to add bucket counts; its Histogram child
        # keeps one value per bucket (not cumulative) and the sum, as RouteStats does.
        last = self._last
        key: tuple[str, Any]
        for index, count in enumerate(stats.buckets):
            key = ("histogram", (stats.event, stats.route, index))
            delta = count - last.get(key, 0)
            if delta:
                child._buckets[index].inc(delta)
                last[key] = count
        key = ("histogram", (stats.event, stats.route, "sum"))
        delta_sum = stats.seconds - last.get(key, 0.0)
        if delta_sum:
            child._sum.inc(delta_sum)
            last[key] = stats.seconds


def _tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def require_prometheus_client() -> Any:
    """The ``prometheus_client`` module.

    Raises:
        ImportError: it is not installed (with the command that installs it).
    """
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise ImportError(
            "metrics need prometheus-client: pip install 'wsevents[metrics]'"
        ) from None
