"""The span makers behind tracing: spans made straight for an SDK tracer (``SdkSpans``) are
the spans the SDK's own ``Tracer.start_span`` makes (sampling, ids and flags, parents, trace
state, processors, limits, the span API), and any other tracer goes through the API."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import (
    ConcurrentMultiSpanProcessor,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.status import Status

from wsevents._spans import ApiSpans, SdkSpans, span_maker
from wsevents.tracing import extract

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
OWN: dict[str, Any] = {"wsevents.event": "rpc", "wsevents.route": "/echo", "wsevents.code": 200}


class TaggingSampler(Sampler):
    """Records without sampling, adds an attribute and a trace state (the generic path)."""

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(
            Decision.RECORD_ONLY,
            {**(attributes or {}), "sampler.tag": name},
            TraceState([("vendor", "x")]),
        )

    def get_description(self) -> str:
        return "TaggingSampler"


class Recorder(SpanProcessor):
    """Records what each hook saw, in order."""

    def __init__(self, log: list[tuple[str, str]] | None = None, tag: str = "") -> None:
        self.log: list[tuple[str, str]] = [] if log is None else log
        self.tag = tag
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        self.log.append((f"{self.tag}start", span.name))
        span.set_attribute("started.by", self.tag or "recorder")

    def _on_ending(self, span: Any) -> None:
        self.log.append((f"{self.tag}ending", span.name))

    def on_end(self, span: ReadableSpan) -> None:
        self.log.append((f"{self.tag}end", span.name))
        self.ended.append(span)


def provider_with(
    sampler: Sampler = ALWAYS_ON, **kwargs: Any
) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler, **kwargs)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def fast() -> Iterator[tuple[SdkSpans, InMemorySpanExporter]]:
    provider, exporter = provider_with()
    maker = span_maker(provider.get_tracer("wsevents"))
    assert isinstance(maker, SdkSpans)
    yield maker, exporter
    provider.shutdown()


def parent_of(kind: str, provider: TracerProvider) -> otel_context.Context:
    if kind == "root":
        return otel_context.Context()
    if kind == "sampled":
        return extract(SAMPLED_PARENT, "congo=t61rcWkgMzE")
    if kind == "unsampled":
        return extract(UNSAMPLED_PARENT)
    local = provider.get_tracer("local").start_span("local parent")
    return trace.set_span_in_context(local, otel_context.Context())


def shape(span: Any, *, ended: bool = False) -> dict[str, Any]:
    """What must agree between a span of SdkSpans and one of the SDK's tracer (ids aside)."""
    context = span.get_span_context()
    found: dict[str, Any] = {
        "recording": None if ended else span.is_recording(),
        "flags": int(context.trace_flags),
        "state": dict(context.trace_state.items()),
        "remote": context.is_remote,
        "valid": context.is_valid,
    }
    if isinstance(span, ReadableSpan):
        parent = span.parent
        found.update(
            name=span.name,
            kind=span.kind,
            attributes=dict(span.attributes or {}),
            parent=None if parent is None else (parent.trace_id, parent.span_id, parent.is_remote),
            resource=span.resource,
            scope=span.instrumentation_scope,
        )
    return found


SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "always_on": lambda: ALWAYS_ON,
    "always_off": lambda: ALWAYS_OFF,
    "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
    "ratio_half": lambda: TraceIdRatioBased(0.5),
    "parentbased_ratio_half": lambda: ParentBased(TraceIdRatioBased(0.5)),
    "tagging": TaggingSampler,
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("parent", ["root", "sampled", "unsampled", "local"])
def test_a_span_is_the_one_the_sdk_tracer_makes(sampler: str, parent: str) -> None:
    provider, exporter = provider_with(SAMPLERS[sampler]())
    tracer = provider.get_tracer("wsevents", "1.0")
    maker = span_maker(tracer)
    assert isinstance(maker, SdkSpans)
    context = parent_of(parent, provider)
    ours = maker.start("ws rpc /echo", SpanKind.SERVER, context, dict(OWN))
    theirs = tracer.start_span(
        "ws rpc /echo", context=context, kind=SpanKind.SERVER, attributes=dict(OWN)
    )
    by_ratio = sampler.endswith("ratio_half") and parent == "root"
    if by_ratio:
        # Two new trace ids may well be decided apart: each as the ratio sampler says.
        bound = TraceIdRatioBased.get_bound_for_rate(0.5)
        for span in (ours, theirs):
            context_of = span.get_span_context()
            low_bits = context_of.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT
            assert context_of.trace_flags.sampled == (low_bits < bound)
            assert span.is_recording() == context_of.trace_flags.sampled
    else:
        assert shape(ours) == shape(theirs)
    ours_context, theirs_context = ours.get_span_context(), theirs.get_span_context()
    if parent == "root":
        assert ours_context.trace_id not in (0, theirs_context.trace_id)
    else:
        assert ours_context.trace_id == theirs_context.trace_id
    assert ours_context.span_id not in (0, theirs_context.span_id)
    ours.end()
    theirs.end()
    finished = exporter.get_finished_spans()
    if by_ratio:
        assert len(finished) == ours.get_span_context().trace_flags.sampled + (
            theirs.get_span_context().trace_flags.sampled
        )
    else:
        # Both exported or neither (the SDK's simple processor drops what is not sampled).
        assert len(finished) in (0, 2)
        if finished:
            exported_ours, exported_theirs = finished
            assert shape(exported_ours, ended=True) == shape(exported_theirs, ended=True)
            assert exported_ours.start_time is not None and exported_ours.end_time is not None
            assert exported_ours.start_time <= exported_ours.end_time
    provider.shutdown()


@pytest.mark.parametrize("parent_based", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_ratio_sampling_of_roots_follows_the_trace_id_as_the_sdk_does(
    rate: float, parent_based: bool
) -> None:
    ratio = TraceIdRatioBased(rate)
    provider, exporter = provider_with(ParentBased(ratio) if parent_based else ratio)
    maker = span_maker(provider.get_tracer("wsevents"))
    spans = [
        maker.start("ws rpc /echo", SpanKind.SERVER, otel_context.Context()) for _ in range(400)
    ]
    sampled = sum(span.get_span_context().trace_flags.sampled for span in spans)
    assert (sampled == 0) if rate == 0 else (sampled == 400) if rate == 1 else (60 < sampled < 140)
    for span in spans:
        context = span.get_span_context()
        below = (context.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT) < ratio.bound
        assert context.trace_flags.sampled == below == span.is_recording()
        assert context.trace_flags.random_trace_id
        span.end()
    assert len(exporter.get_finished_spans()) == sampled
    provider.shutdown()


def test_own_attributes_then_user_ones_end_as_on_an_sdk_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = provider_with()
    tracer = provider.get_tracer("wsevents")
    maker = span_maker(tracer)
    ours = maker.start("ws rpc /echo", SpanKind.SERVER, otel_context.Context())
    maker.own(ours, dict(OWN))
    theirs = tracer.start_span("ws rpc /echo", context=otel_context.Context())
    theirs.set_attributes(dict(OWN))
    for span in (ours, theirs):
        span.set_attribute("user.valid", 3)
        span.set_attribute("user.object", object())  # type: ignore[arg-type]
        span.set_attributes({"user.more": "yes"})
        span.end()
        with caplog.at_level(logging.WARNING):
            span.set_attribute("late", 1)
    assert caplog.text.count("Setting attribute on ended span.") == 2
    exported_ours, exported_theirs = exporter.get_finished_spans()
    assert dict(exported_ours.attributes or {}) == dict(exported_theirs.attributes or {})
    assert dict(exported_ours.attributes or {}) == {
        **OWN,
        "user.valid": 3,
        "user.object": None,  # not a valid value: the SDK's rule replaces it
        "user.more": "yes",
    }
    provider.shutdown()


def test_events_exceptions_status_name_and_links(
    fast: tuple[SdkSpans, InMemorySpanExporter],
) -> None:
    maker, exporter = fast
    span = maker.start("ws rpc /echo", SpanKind.SERVER, otel_context.Context())
    span.add_event("checkpoint", {"step": 1})
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, "failed"))
    span.update_name("ws rpc /renamed")
    linked = SpanContext(TRACE_ID, 0x00F067AA0BA902B7, True, TraceFlags(1))
    span.add_link(linked, {"why": "test"})
    span.end()
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "ws rpc /renamed"
    assert [event.name for event in exported.events] == ["checkpoint", "exception"]
    exception = exported.events[1].attributes or {}
    assert exception["exception.type"] == "ValueError"
    assert exception["exception.message"] == "bad value"
    assert "Traceback" in str(exception["exception.stacktrace"])
    assert exported.status.status_code is StatusCode.ERROR
    assert exported.status.description == "failed"
    assert [link.context for link in exported.links] == [linked]


def test_a_span_ends_once_and_refuses_changes_afterwards(
    fast: tuple[SdkSpans, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    maker, exporter = fast
    span = maker.start("ws rpc /echo", SpanKind.SERVER, otel_context.Context())
    assert span.is_recording()
    span.end()
    assert not span.is_recording()
    with caplog.at_level(logging.WARNING):
        span.end()
        span.add_event("late")
        span.set_status(StatusCode.ERROR)
        span.update_name("late")
        span.start()  # type: ignore[attr-defined]
    assert "Calling end() on an ended span." in caplog.text
    assert "Calling start() on a started span." in caplog.text
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "ws rpc /echo"
    assert exported.events == ()
    assert exported.status.status_code is StatusCode.UNSET


def test_span_limits_apply_to_own_and_added_attributes_events_and_links() -> None:
    limits = SpanLimits(
        max_span_attributes=2, max_span_attribute_length=3, max_events=1, max_links=1
    )
    provider, exporter = provider_with(span_limits=limits)
    tracer = provider.get_tracer("wsevents")
    maker = span_maker(tracer)
    ours = maker.start("ws rpc /echo", SpanKind.SERVER, otel_context.Context())
    maker.own(ours, {"a": "long text", "b": "more text", "c": "kept"})
    theirs = tracer.start_span("ws rpc /echo", context=otel_context.Context())
    theirs.set_attributes({"a": "long text", "b": "more text", "c": "kept"})
    context = SpanContext(TRACE_ID, 1, True, TraceFlags(1))
    for span in (ours, theirs):
        span.add_event("one")
        span.add_event("two")
        span.add_link(context)
        span.add_link(context)
        span.end()
    exported_ours, exported_theirs = exporter.get_finished_spans()
    for exported in (exported_ours, exported_theirs):
        # The SDK's bounded attributes keep the newest, cut to the length limit.
        assert dict(exported.attributes or {}) == {"b": "mor", "c": "kep"}
        assert exported.dropped_attributes == 1
        assert [event.name for event in exported.events] == ["two"]
        assert exported.dropped_events == 1
        assert len(exported.links) == 1 and exported.dropped_links == 1
    provider.shutdown()


def test_processors_see_start_ending_and_end_in_order_also_ones_added_later() -> None:
    provider, _ = provider_with()
    first = Recorder(tag="1:")
    provider.add_span_processor(first)
    maker = span_maker(provider.get_tracer("wsevents"))
    maker.start("a", SpanKind.SERVER, otel_context.Context()).end()
    second = Recorder(first.log, tag="2:")
    provider.add_span_processor(second)
    maker.start("b", SpanKind.SERVER, otel_context.Context()).end()
    assert first.log == [
        ("1:start", "a"),
        ("1:ending", "a"),
        ("1:end", "a"),
        ("1:start", "b"),
        ("2:start", "b"),
        ("1:ending", "b"),
        ("2:ending", "b"),
        ("1:end", "b"),
        ("2:end", "b"),
    ]
    # What on_start set is on the span the processors got at the end.
    assert (second.ended[0].attributes or {})["started.by"] == "2:"
    assert isinstance(second.ended[0], SdkSpan)
    provider.shutdown()


def test_a_concurrent_multi_processor_is_called_through_its_own_interface() -> None:
    processor = ConcurrentMultiSpanProcessor(num_threads=2)
    provider = TracerProvider(active_span_processor=processor)
    recorder = Recorder()
    provider.add_span_processor(recorder)
    maker = span_maker(provider.get_tracer("wsevents"))
    maker.start("a", SpanKind.SERVER, otel_context.Context()).end()
    assert sorted(recorder.log) == [("end", "a"), ("ending", "a"), ("start", "a")]
    provider.shutdown()


class CountingIds(IdGenerator):
    def __init__(self) -> None:
        self.next = 0

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return self.next << 64

    def is_trace_id_random(self) -> bool:
        return False


def test_a_custom_id_generator_gives_the_ids_and_no_random_flag() -> None:
    ids = CountingIds()
    provider = TracerProvider(id_generator=ids)
    maker = span_maker(provider.get_tracer("wsevents"))
    span = maker.start("a", SpanKind.SERVER, otel_context.Context())
    context = span.get_span_context()
    assert (context.trace_id, context.span_id) == (1 << 64, 2)
    assert int(context.trace_flags) == TraceFlags.SAMPLED
    theirs = provider.get_tracer("wsevents").start_span("a", context=otel_context.Context())
    assert int(theirs.get_span_context().trace_flags) == int(context.trace_flags)


def test_a_disabled_tracer_makes_non_recording_spans_like_the_sdk() -> None:
    provider, exporter = provider_with()
    configure = getattr(provider, "_set_tracer_configurator", None)
    if configure is None:
        pytest.skip("this opentelemetry-sdk has no tracer configurator")
    tracer = provider.get_tracer("wsevents")
    maker = span_maker(tracer)
    from opentelemetry.sdk.trace import _TracerConfig

    configure(tracer_configurator=lambda scope: _TracerConfig(is_enabled=False))
    context = extract(SAMPLED_PARENT)
    ours = maker.start("a", SpanKind.SERVER, context)
    theirs = tracer.start_span("a", context=context)
    assert type(ours) is type(theirs) is NonRecordingSpan
    assert ours.get_span_context() == theirs.get_span_context()
    root = maker.start("a", SpanKind.SERVER, otel_context.Context())
    assert not root.is_recording() and not root.get_span_context().is_valid
    assert exporter.get_finished_spans() == ()


def test_other_tracers_go_through_the_api() -> None:
    assert isinstance(span_maker(trace.NoOpTracer()), ApiSpans)
    proxy = trace.ProxyTracerProvider().get_tracer("wsevents")
    maker = span_maker(proxy)
    assert isinstance(maker, ApiSpans)
    span = maker.start("a", SpanKind.SERVER, otel_context.Context(), {"k": 1})
    maker.own(span, {"k": 2})  # a non-recording span takes and drops them
    assert not span.is_recording()
    span.end()


def test_a_global_provider_set_after_tracing_was_enabled_gets_the_fast_maker() -> None:
    script = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from wsevents import WsApp
from wsevents.connection import Connection
from wsevents.testing.contexts import RecordingSocket

ws = WsApp(heartbeat=0)
ws.on_message("rpc", "/echo")(lambda: 1)
ws.enable_tracing()
tracing = ws._dispatcher._tracing
print(type(tracing._spans).__name__)
conn = Connection(RecordingSocket())
ws._dispatcher.handle_frame(conn, '{"event":"rpc","path":"/echo","id":1}')
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
ws._dispatcher.handle_frame(conn, '{"event":"rpc","path":"/echo","id":2}')
print(type(tracing._spans).__name__)
print([span.name for span in exporter.get_finished_spans()])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["ApiSpans", "SdkSpans", "['ws rpc /echo']"]
