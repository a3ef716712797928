"""Servers for ``benchmarks/tracing_cost.py``: the reference app with tracing on.

* ``sampled``: every message sampled (``ALWAYS_ON``), its spans ended into a
  ``BatchSpanProcessor`` whose exporter discards them: the SDK's whole work per span,
  the background export thread included, without the network;
* ``unsampled``: tracing on, nothing sampled (``ALWAYS_OFF``): what wsevents and the
  OpenTelemetry API cost per message when a trace is not kept;
* ``ratio``: 1 % of the traces sampled (``ParentBased(TraceIdRatioBased(0.01))``, what the
  tracing guide recommends for busy servers), exported as ``sampled``.

Both are factories (``python -m wsevents run benchmarks.tracing_app:sampled``); each
call loads a fresh copy of ``examples/reference_app.py`` (the same routes, its own
``WsApp``), so the ``app`` other code imports is never traced.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from wsevents import WsApp

REFERENCE_APP = Path(__file__).resolve().parent.parent / "examples" / "reference_app.py"
_copies = itertools.count()


def fresh_reference_app() -> WsApp:
    """A new WsApp with the reference app's routes (its module loaded once more)."""
    spec = importlib.util.spec_from_file_location(
        f"_reference_app_copy_{next(_copies)}", REFERENCE_APP
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its declared types are resolved through it
    spec.loader.exec_module(module)
    app: WsApp = module.app
    return app


class DiscardingExporter(SpanExporter):
    """Takes every batch and drops it (counts the spans, to check that they were made)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def traced(sampler: Sampler) -> tuple[WsApp, TracerProvider, DiscardingExporter]:
    """The reference app with tracing on through a provider with ``sampler``."""
    exporter = DiscardingExporter()
    provider = TracerProvider(sampler=sampler)
    # A queue deep enough for the load generator's rate: no span is dropped.
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    app = fresh_reference_app()
    app.enable_tracing(provider)
    return app, provider, exporter


def sampled() -> WsApp:
    return traced(ALWAYS_ON)[0]


def unsampled() -> WsApp:
    return traced(ALWAYS_OFF)[0]


RATIO = 0.01
"""The share of traces the ``ratio`` server samples."""


def ratio() -> WsApp:
    return traced(ParentBased(TraceIdRatioBased(RATIO)))[0]
