"""How [`Tracing`][wsevents.tracing.Tracing] makes its spans: through the OpenTelemetry API, or
straight as the SDK's own spans when the tracer is the SDK's.

A span made by the SDK's ``Tracer.start_span`` costs several times a whole RPC reply of
wsevents: most of it goes to work a wsevents span never needs (checking attributes whose types
are known, a lock and bounded containers made for every span, a snapshot copy at the end).
[`SdkSpans`][] makes the same spans for less: objects of a subclass of the SDK's ``Span``,
started and ended as the SDK's tracer does it:

* the tracer's sampler decides (a static decision, as ``ALWAYS_ON`` or the default
  ``ParentBased(ALWAYS_ON)`` give for a root span, is read once, not asked per span);
* ids come from the provider's id generator, trace flags and trace state as the SDK sets them;
* the provider's span processors see ``on_start``, ``_on_ending`` and ``on_end``; the SDK's
  own span-count metrics, when enabled, count them;
* span limits apply to everything user code adds (attributes, events, links): the bounded
  containers are made when something is added, not before.

What it does not do: give processors a snapshot copy at the end (they get the span itself,
which refuses changes once ended, as the SDK's does). Any other tracer (a vendor's, a no-op
one, an SDK version whose tracer lacks what [`SdkSpans`][] reads) goes through the API:
[`ApiSpans`][].
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from random import getrandbits as _getrandbits
from time import time_ns
from typing import Any, Protocol, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

log = logging.getLogger("wsevents.tracing")

__all__ = ["ApiSpans", "SdkSpans", "SpanMaker", "span_maker"]

_OWN_ATTRIBUTES = 8
"""At most this many attributes are set by wsevents on one span (plain dicts below the
span limits; a lower ``max_span_attributes`` makes them bounded from the start)."""


class SpanMaker(Protocol):
    """What [`Tracing`][wsevents.tracing.Tracing] asks of a span maker."""

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: otel_context.Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        """A started span ``name`` in ``context`` (None: the current one)."""

    def own(self, span: Span, attributes: dict[str, Any]) -> None:
        """Add wsevents' own ``attributes`` (known valid) to a recording ``span``."""


class ApiSpans:
    """Spans through the OpenTelemetry API (any tracer)."""

    __slots__ = ("tracer",)

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: otel_context.Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    def own(self, span: Span, attributes: dict[str, Any]) -> None:
        span.set_attributes(attributes)


def span_maker(tracer: trace.Tracer) -> SpanMaker:
    """[`SdkSpans`][] for an SDK tracer it can serve, else [`ApiSpans`][]."""
    try:
        from opentelemetry.sdk.trace import Tracer as SdkTracer
    except ImportError:  # pragma: no cover - the tracing extra installs the SDK
        return ApiSpans(tracer)
    if type(tracer) is SdkTracer and all(
        hasattr(tracer, name)
        for name in (
            "sampler",
            "resource",
            "span_processor",
            "id_generator",
            "instrumentation_info",
            "_span_limits",
            "_instrumentation_scope",
        )
    ):
        return SdkSpans(tracer)
    return ApiSpans(tracer)


class SdkSpans:
    """Spans of an SDK tracer, made as its ``start_span`` makes them, for less.

    Args:
        tracer: an ``opentelemetry.sdk.trace.Tracer`` (see [`span_maker`][]).
    """

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        self.tracer = tracer
        self._cls = _span_class(tracer)
        self._processor = tracer.span_processor
        self._sampler = tracer.sampler
        self._id_generator = tracer.id_generator
        self._random_ids = type(tracer.id_generator) is RandomIdGenerator
        random_trace_id = bool(tracer.id_generator.is_trace_id_random())
        self._root_random = TraceFlags.RANDOM_TRACE_ID if random_trace_id else 0
        self._flags: dict[int, TraceFlags] = {}
        # The SDK's own span-count metrics (None: disabled, as by default).
        metrics = getattr(tracer, "_tracer_metrics", None)
        self._metrics = (
            None if metrics is None or type(metrics).__name__ == "NoOpTracerMetrics" else metrics
        )
        limits = self._limits = tracer._span_limits
        max_attributes = limits.max_span_attributes
        self._plain = limits.max_span_attribute_length is None and (
            max_attributes is None or max_attributes >= _OWN_ATTRIBUTES
        )
        # How a root span is decided without asking the sampler, when its rule is one the
        # SDK ships: (ratio bound or None, recording, flags if sampled, flags if not).
        self._root: tuple[int | None, bool, TraceFlags, TraceFlags] | None = None
        rule = _root_rule(tracer.sampler)
        if rule is not None and self._random_ids and self._metrics is None:
            bound, decision = rule
            unsampled = self._trace_flags(self._root_random)
            if bound is not None:
                sampled = self._trace_flags(TraceFlags.SAMPLED | self._root_random)
                self._root = (bound, True, sampled, unsampled)
            else:
                flags = self._trace_flags(
                    (TraceFlags.SAMPLED if decision.is_sampled() else 0) | self._root_random
                )
                self._root = (None, bool(decision.is_recording()), flags, flags)
        self._starters: tuple[Any, ...] = ()  # processors whose on_start does something
        self._seen: Any = None

    def _enabled(self) -> bool:
        """Whether the tracer makes spans (a tracer configurator may turn it off)."""
        return bool(getattr(self.tracer, "_tracer_config", _ENABLED).is_enabled)

    def _trace_flags(self, value: int) -> TraceFlags:
        flags = self._flags.get(value)
        if flags is None:
            flags = self._flags[value] = TraceFlags(value)
        return flags

    def _on_start(self, span: Any, context: otel_context.Context | None) -> None:
        # The processors whose on_start does something (the SDK's batch and simple
        # processors do nothing there), read again whenever the provider's set changes.
        if not self._cls._direct:
            self._processor.on_start(span, parent_context=context)
            return
        processors = self._processor._span_processors
        if processors is not self._seen:
            self._seen = processors
            no_ops = self._cls._no_op_starts
            self._starters = tuple(
                p for p in processors if getattr(type(p), "on_start", None) not in no_ops
            )
        for processor in self._starters:
            processor.on_start(span, parent_context=context)

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: otel_context.Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        root = self._root
        if root is not None and context is not None and not context and self._enabled():
            # A root span (an empty context: no parent) decided by a rule known here.
            bound, recording, flags, unsampled = root
            trace_id = _getrandbits(128) or _random_id(128)
            if bound is not None:  # TraceIdRatioBased: the low 64 bits against the bound
                recording = (trace_id & _LOW_64_BITS) < bound
                if not recording:
                    flags = unsampled
            span_context = SpanContext(
                trace_id, _getrandbits(64) or _random_id(64), False, flags, None
            )
            if not recording:
                return NonRecordingSpan(span_context)
            # The fields _MessageSpan.__init__ sets, without its call (the hot path).
            span = _new(self._cls)
            span._name = name
            span._context = span_context
            span._parent = None
            span._kind = kind
            span._attributes = (
                {}
                if attributes is None
                else attributes
                if self._plain
                else _bounded(self._limits, attributes)
            )
            span._resource = self.tracer.resource
            span._start_time = time_ns()
            self._on_start(span, context)
            return cast(Span, span)
        return self._start(name, kind, context, attributes)

    def _start(
        self,
        name: str,
        kind: SpanKind,
        context: otel_context.Context | None,
        attributes: dict[str, Any] | None,
    ) -> Span:
        """[`start`][] in general: a parent, a sampler asked per span, the SDK's metrics."""
        parent = trace.get_current_span(context).get_span_context()
        if not self._enabled():
            return NonRecordingSpan(parent)
        if not parent.is_valid:
            parent_context: SpanContext | None = None
            if self._random_ids:
                trace_id = _random_id(128)
            else:
                trace_id = self._id_generator.generate_trace_id()
            random_flag: int = self._root_random
        else:
            parent_context = parent
            trace_id = parent.trace_id
            random_flag = parent.trace_flags & TraceFlags.RANDOM_TRACE_ID
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
        decision = result.decision
        sampled = TraceFlags.SAMPLED if decision.is_sampled() else 0
        span_id = _random_id(64) if self._random_ids else self._id_generator.generate_span_id()
        span_context = SpanContext(
            trace_id, span_id, False, self._trace_flags(sampled | random_flag), result.trace_state
        )
        end_metrics = (
            None if self._metrics is None else self._metrics.start_span(parent_context, decision)
        )
        if not decision.is_recording():
            return NonRecordingSpan(span_context)
        kept = dict(result.attributes) if result.attributes else {}
        span = self._cls(
            name,
            span_context,
            parent_context,
            kind,
            kept if self._plain else _bounded(self._limits, kept),
            self.tracer.resource,
        )
        if end_metrics is not None:
            span._record_end_metrics = end_metrics
        self._on_start(span, context)
        return cast(Span, span)

    def own(self, span: Span, attributes: dict[str, Any]) -> None:
        if type(span) is self._cls and self._plain:
            span._own(attributes)  # type: ignore[attr-defined]
        else:
            span.set_attributes(attributes)


class _Enabled:
    is_enabled = True


_ENABLED = _Enabled()
"""What an SDK tracer without a ``_tracer_config`` (before SDK 1.37) reads as: enabled."""
_new = object.__new__
_LOW_64_BITS = (1 << 64) - 1


def _bounded(limits: Any, attributes: Mapping[str, Any] | None) -> Any:
    """``attributes`` in the SDK's bounded, checked container, under ``limits``."""
    return BoundedAttributes(
        limits.max_span_attributes,
        attributes,
        immutable=False,
        max_value_len=limits.max_span_attribute_length,
    )


def _random_id(bits: int) -> int:
    value = _getrandbits(bits)
    while not value:  # an all-zero id is invalid (as the SDK's RandomIdGenerator retries)
        value = _getrandbits(bits)
    return value


def _root_rule(sampler: Any) -> tuple[int | None, Any] | None:
    """How ``sampler`` decides a root span, when its rule is one of the SDK's: ``(None,
    decision)`` for a static one (``ALWAYS_ON``, ``ALWAYS_OFF``), ``(bound, None)`` for
    ``TraceIdRatioBased`` (sampled when the trace id's low 64 bits are below ``bound``),
    also as the root rule of ``ParentBased``; None for any other sampler (asked per span)."""
    from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased

    if type(sampler) is ParentBased:
        sampler = getattr(sampler, "_root", None)
    if type(sampler) is StaticSampler:
        decision = getattr(sampler, "_decision", None)
        return None if decision is None else (None, decision)
    if type(sampler) is TraceIdRatioBased and sampler.TRACE_ID_LIMIT == _LOW_64_BITS:
        return (int(sampler.bound), None)
    return None


def _span_class(tracer: Any) -> Any:
    """A subclass of the SDK span class of [`SdkSpans`][] whose constants are ``tracer``'s.

    With the SDK's usual ``SynchronousMultiSpanProcessor`` (``_direct``), its processors are
    called one by one, and those whose ``on_start`` or ``_on_ending`` is known to do nothing
    (the SDK's own batch and simple processors) are not called there.
    """
    from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shipped = (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
    direct = type(tracer.span_processor) is SynchronousMultiSpanProcessor and isinstance(
        getattr(tracer.span_processor, "_span_processors", None), tuple
    )
    return type(
        "MessageSpan",
        (_message_span_base(),),
        {
            "_sampler": tracer.sampler,
            "_span_processor": tracer.span_processor,
            "_limits": tracer._span_limits,
            "_instrumentation_info": tracer.instrumentation_info,
            "_instrumentation_scope": tracer._instrumentation_scope,
            "_direct": direct,
            "_no_op_starts": frozenset(getattr(c, "on_start", None) for c in shipped),
            "_no_op_endings": frozenset(getattr(c, "_on_ending", None) for c in shipped),
        },
    )


_BASE: Any = None


def _message_span_base() -> Any:
    """The SDK ``Span`` subclass behind [`SdkSpans`][] (made once, on first use: importing
    this module does not import the SDK)."""
    global _BASE
    if _BASE is not None:
        return _BASE
    from opentelemetry.sdk.trace import Span as SdkSpan
    from opentelemetry.sdk.util import BoundedList
    from opentelemetry.trace.status import Status, StatusCode

    class _MessageSpan(SdkSpan):
        """An SDK span made without what it does not use yet.

        Everything a span does not vary per span is a class attribute (of the per-tracer
        subclass); the lock, the bounded attributes, events and links are made when first
        needed.
        """

        _end_time: int | None = None
        _status = Status(StatusCode.UNSET)
        _events: Any = ()
        _links: Any = ()
        _trace_config = None
        _record_exception = True
        _set_status_on_exception = True
        _record_end_metrics = None

        def __init__(
            self,
            name: str,
            context: SpanContext,
            parent: SpanContext | None,
            kind: SpanKind,
            attributes: Any,
            resource: Any,
        ) -> None:
            self._name = name
            self._context = context
            self._parent = parent
            self._kind = kind
            self._attributes = attributes
            self._resource = resource
            self._start_time = time_ns()

        def __getattr__(self, name: str) -> Any:
            # The SDK's methods lock ``_lock`` (set_status, update_name, add_event, ...):
            # one is made for the spans that call them.
            if name == "_lock":
                lock = threading.Lock()
                object.__setattr__(self, "_lock", lock)
                return lock
            raise AttributeError(name)

        def _attributes_to_change(self) -> Any:
            attributes = self._attributes
            if type(attributes) is not BoundedAttributes:
                attributes = self._attributes = _bounded(self._limits, attributes)
            return attributes

        def _own(self, attributes: dict[str, Any]) -> None:
            if self._end_time is not None:
                return
            current: Any = self._attributes
            if not current:
                self._attributes = attributes
            elif type(current) is dict:
                current.update(attributes)
            else:
                for key, value in attributes.items():
                    current[key] = value

        def set_attribute(self, key: str, value: Any) -> None:
            self.set_attributes({key: value})

        def set_attributes(self, attributes: Mapping[str, Any]) -> None:
            if self._end_time is not None:
                log.warning("Setting attribute on ended span.")
                return
            target: Any = self._attributes_to_change()
            for key, value in attributes.items():
                target[key] = value

        def _add_event(self, event: Any) -> None:
            self._append("_events", self._limits.max_events, event)

        def _add_link(self, link: Any) -> None:
            self._append("_links", self._limits.max_links, link)

        def _append(self, field: str, limit: int | None, item: Any) -> None:
            """Add ``item`` to the events or links (``field``), bounded to ``limit``; the
            bounded list is made by the first one."""
            if self._end_time is not None:
                log.warning("Tried calling add%s on an ended span.", field[:-1])
                return
            items = getattr(self, field)
            if type(items) is tuple:
                items = BoundedList(limit)
                setattr(self, field, items)
            items.append(item)

        def start(
            self,
            start_time: int | None = None,
            parent_context: otel_context.Context | None = None,
        ) -> None:
            log.warning("Calling start() on a started span.")

        def end(self, end_time: int | None = None) -> None:
            if self._end_time is not None:
                log.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            attributes = self._attributes
            if type(attributes) is BoundedAttributes:
                attributes._immutable = True
            if self._record_end_metrics is not None:
                self._record_end_metrics()
            processor: Any = self._span_processor
            if not self._direct:
                on_ending = getattr(processor, "_on_ending", None)  # SDK 1.29 and later
                if on_ending is not None:
                    on_ending(self)
                processor.on_end(self)
                return
            processors = processor._span_processors
            no_ops = self._no_op_endings
            for each in processors:
                if getattr(type(each), "_on_ending", None) not in no_ops:
                    each._on_ending(self)
            for each in processors:
                each.on_end(self)

    _BASE = _MessageSpan
    return _BASE
