"""OpenTelemetry tracing: a span per message, trace context across instances.

Imported only by [`WsApp.enable_tracing`][wsevents.WsApp.enable_tracing] (and the
``--tracing`` option of the command line): an app that never enables tracing never imports
OpenTelemetry, and its dispatcher and cluster check one attribute per message or envelope.

Spans (all made by the tracer ``"wsevents"``):

* ``ws <event> <route pattern>`` (kind ``SERVER``): one per routed message, from the
  dispatch to the reply, the handler running inside it (its own spans are children);
  ``ws * *`` for the ``on_unhandled`` fallback, ``ws unrouted`` for a message no route
  matches (404);
* ``ws publish <kind>`` (``PRODUCER``): an envelope handed to the transport (a room
  broadcast, a server-wide broadcast, a ``send_to`` to another instance); its context
  travels in the envelope as W3C ``traceparent``/``tracestate``;
* ``ws deliver <kind>`` (``CONSUMER``): that envelope served on another instance, a child
  of the publish span, so one trace shows a broadcast's way across instances.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._spans import SpanMaker, span_maker
from .cluster import MAX_TRACEPARENT_LENGTH, MAX_TRACESTATE_LENGTH

if TYPE_CHECKING:
    from ._context import MessageScope
    from .cluster import Envelope
    from .connection import Connection
    from .protocol import ClientMessage

__all__ = [
    "ATTR_CODE",
    "ATTR_CONNECTION",
    "ATTR_DELIVERED",
    "ATTR_DESTINATION",
    "ATTR_EVENT",
    "ATTR_INSTANCE",
    "ATTR_KEPT",
    "ATTR_ORIGIN",
    "ATTR_PATH",
    "ATTR_ROUTE",
    "MAX_ATTRIBUTE_LENGTH",
    "TRACER_NAME",
    "Tracing",
    "extract",
    "provider_from_env",
]

TRACER_NAME = "wsevents"

ATTR_EVENT = "wsevents.event"
"""The message's (or envelope's) event."""
ATTR_ROUTE = "wsevents.route"
"""The matched route pattern (``/chat/rooms/:room``), never the concrete path."""
ATTR_PATH = "wsevents.path"
"""The concrete path (cut to [`MAX_ATTRIBUTE_LENGTH`][] characters)."""
ATTR_CONNECTION = "wsevents.connection.id"
"""The id of the connection the message came from."""
ATTR_CODE = "wsevents.code"
"""200 for a successful reply; the error code (also of a message without id, which gets no
reply); absent for a message without id that succeeded."""
ATTR_KEPT = "wsevents.idem.kept"
"""True on the span of an idempotent call answered with the reply kept from its first run
(the handler did not run again)."""
ATTR_INSTANCE = "wsevents.instance.id"
"""The id of the instance that publishes or delivers an envelope."""
ATTR_ORIGIN = "wsevents.origin"
"""On a deliver span: the id of the instance that published the envelope."""
ATTR_DELIVERED = "wsevents.delivered"
"""On a deliver span: local connections the push was written to."""
ATTR_DESTINATION = "messaging.destination.name"
"""The transport channel of an envelope (e.g. ``ws:room:/chat/rooms/lobby``)."""

MAX_ATTRIBUTE_LENGTH = 256
"""Client-chosen text (paths, events of unrouted messages) is cut to this length."""

_EMPTY = otel_context.Context()
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"
_TRACEPARENT_B = b"traceparent"
_TRACESTATE = "tracestate"
_SERVER = SpanKind.SERVER
_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
_attach = otel_context.attach
_detach = otel_context.detach
_in_context = trace.set_span_in_context


class Tracing:
    """The tracing side of one app: its tracer and the span of each step.

    Made by [`WsApp.enable_tracing`][wsevents.WsApp.enable_tracing]; the dispatcher and the
    cluster call it only while it is set.

    Args:
        tracer_provider: where spans go (None: the global provider, resolved when spans
            are made, so one configured later is used).
        client_context: continue a trace a client frame names in a ``traceparent`` key
            (see the wire extension in the tracing guide); False: every message starts a
            new trace.
        decode: the app codec's ``decode`` (reads ``traceparent`` from a frame).
    """

    __slots__ = ("_decode", "_late", "_names", "_spans", "client_context", "tracer")

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        *,
        client_context: bool = True,
        decode: Callable[[str | bytes], Any],
    ) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        # An SDK tracer's spans are made straight (see _spans.py); any other through the API.
        self._spans: SpanMaker = span_maker(self.tracer)
        # The global provider, not set yet: the API's proxy until it is, then its own tracer.
        self._late = tracer_provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )
        self.client_context = client_context
        self._decode = decode
        self._names: dict[tuple[str, str], str] = {}

    def _resolve(self) -> SpanMaker:
        """The span maker, once the global tracer provider is set (until then the proxy's)."""
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            self._late = False
            self.tracer = trace.get_tracer(TRACER_NAME)
            self._spans = span_maker(self.tracer)
        return self._spans

    # -- messages ---------------------------------------------------------------------

    def start(self, scope: MessageScope) -> Span:
        """Start the span of ``scope``'s message (not yet current); stored in
        ``scope.span``."""
        msg = scope.message
        route = scope.route
        key = (route.event, route.pattern)
        name = self._names.get(key)
        if name is None:
            if len(self._names) > 4096:  # routes are few; the fallback's is fixed
                self._names.clear()
            name = self._names[key] = f"ws {route.event} {route.pattern}"
        spans = self._resolve() if self._late else self._spans
        span = spans.start(name, _SERVER, self._parent(msg))
        # Attributes only for a span that is kept: an unsampled message costs less.
        if span.is_recording():
            attributes: dict[str, Any] = {
                ATTR_EVENT: msg.event,
                ATTR_ROUTE: route.pattern,
                ATTR_PATH: msg.path[:MAX_ATTRIBUTE_LENGTH],
                ATTR_CONNECTION: scope.connection.id,
            }
            if msg.has_id:
                attributes[ATTR_CODE] = 200
            spans.own(span, attributes)
        scope.span = span
        return span

    def run_sync(
        self,
        span: Span,
        run: Callable[[Callable[[], Any], MessageScope], None],
        fn: Callable[[], Any],
        scope: MessageScope,
    ) -> None:
        """``run(fn, scope)`` with ``span`` current, then end it.

        Runs in the message's own copy of the connection's context, dropped afterwards:
        the span is made current there and never detached.
        """
        _attach(_in_context(span))
        try:
            run(fn, scope)
        finally:
            span.end()

    async def run_async(self, span: Span, coro: Awaitable[None]) -> None:
        """Await ``coro`` with ``span`` current, then end it (in the message's task, whose
        context is its own: nothing to detach)."""
        _attach(_in_context(span))
        try:
            await coro
        finally:
            span.end()

    def failed(self, scope: MessageScope, code: int, exc: BaseException) -> None:
        """Record on ``scope``'s span that its message failed with ``code``: the code, and
        for 5xx the error status and the exception."""
        span = scope.span
        if span is None:
            return
        if not span.is_recording():
            return
        self._spans.own(span, {ATTR_CODE: code})
        if code >= 500:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__} ({code})"))

    def kept(self, scope: MessageScope, code: int) -> None:
        """Record on ``scope``'s span that its idempotent call got the reply kept from its
        first run, with ``code`` (5xx: an error status, without an exception)."""
        span = scope.span
        if span is None or not span.is_recording():
            return
        self._spans.own(span, {ATTR_CODE: code, ATTR_KEPT: True})
        if code >= 500:
            span.set_status(Status(StatusCode.ERROR, f"kept reply ({code})"))

    def unrouted(self, conn: Connection, msg: ClientMessage) -> None:
        """A span for a message that no route matches (code 404 when it has an id)."""
        attributes: dict[str, Any] = {
            ATTR_EVENT: msg.event[:MAX_ATTRIBUTE_LENGTH],
            ATTR_PATH: msg.path[:MAX_ATTRIBUTE_LENGTH],
            ATTR_CONNECTION: conn.id,
        }
        if msg.has_id:
            attributes[ATTR_CODE] = 404
        spans = self._resolve() if self._late else self._spans
        spans.start("ws unrouted", _SERVER, self._parent(msg), attributes).end()

    def _parent(self, msg: ClientMessage) -> otel_context.Context:
        """The context a message's span starts in: the client's ``traceparent`` when
        allowed and valid, else none (a new trace; never the upgrade request's)."""
        raw = msg.raw
        if not self.client_context:
            return _EMPTY
        # A cheap look before a second decode: most frames carry no trace context.
        if (_TRACEPARENT not in raw) if isinstance(raw, str) else (_TRACEPARENT_B not in raw):
            return _EMPTY
        try:
            obj = self._decode(raw)
        except Exception:
            return _EMPTY
        if not isinstance(obj, dict):
            return _EMPTY
        return extract(obj.get(_TRACEPARENT), obj.get(_TRACESTATE))

    # -- envelopes --------------------------------------------------------------------

    async def publish(
        self,
        send: Callable[[str, Callable[[], str]], Awaitable[Exception | None]],
        channel: str,
        envelope: Envelope,
    ) -> Exception | None:
        """``send(channel, encode)`` inside a ``ws publish`` span whose context the
        envelope carries; a failed publish marks the span as an error."""
        spans = self._resolve() if self._late else self._spans
        span = spans.start(
            f"ws publish {envelope.kind}",
            _PRODUCER,
            None,
            {
                ATTR_EVENT: envelope.event,
                ATTR_PATH: envelope.path[:MAX_ATTRIBUTE_LENGTH],
                ATTR_DESTINATION: channel[:MAX_ATTRIBUTE_LENGTH],
                ATTR_INSTANCE: envelope.origin,
            },
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=_in_context(span))
        traceparent = carrier.get(_TRACEPARENT)
        if traceparent is not None:
            envelope = dataclasses.replace(
                envelope, traceparent=traceparent, tracestate=carrier.get(_TRACESTATE)
            )
        try:
            error = await send(channel, envelope.encode)
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"publish: {type(error).__name__}"))
        finally:
            span.end()
        return error

    def deliver(
        self,
        instance_id: str,
        envelope: Envelope,
        channel: str,
        serve: Callable[..., int | None],
        *args: Any,
    ) -> None:
        """``serve(*args)`` inside a ``ws deliver`` span of the instance ``instance_id``,
        the child of the publish span the envelope names (a new trace when it names
        none)."""
        parent = (
            extract(envelope.traceparent, envelope.tracestate)
            if envelope.traceparent is not None
            else _EMPTY
        )
        spans = self._resolve() if self._late else self._spans
        span = spans.start(
            f"ws deliver {envelope.kind}",
            _CONSUMER,
            parent,
            {
                ATTR_EVENT: envelope.event,
                ATTR_PATH: envelope.path[:MAX_ATTRIBUTE_LENGTH],
                ATTR_DESTINATION: channel[:MAX_ATTRIBUTE_LENGTH],
                ATTR_INSTANCE: instance_id,
                ATTR_ORIGIN: envelope.origin[:MAX_ATTRIBUTE_LENGTH],
            },
        )
        token = _attach(_in_context(span))
        try:
            delivered = serve(*args)
            if delivered is not None and span.is_recording():
                spans.own(span, {ATTR_DELIVERED: delivered})
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            _detach(token)
            span.end()


def extract(traceparent: object, tracestate: object = None) -> otel_context.Context:
    """The context W3C ``traceparent``/``tracestate`` values name; an empty one when
    ``traceparent`` is missing, not text, too long or invalid."""
    if type(traceparent) is not str or len(traceparent) > MAX_TRACEPARENT_LENGTH:
        return _EMPTY
    carrier = {_TRACEPARENT: traceparent}
    if type(tracestate) is str and len(tracestate) <= MAX_TRACESTATE_LENGTH:
        carrier[_TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier, context=_EMPTY)


# -- the command line -----------------------------------------------------------------------

_OTLP_EXPORTERS = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
}


def provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """What ``--tracing`` traces with: None when a global tracer provider is already set
    (by the app, ``opentelemetry-instrument`` or ``OTEL_PYTHON_TRACER_PROVIDER``: it is
    used); otherwise a new SDK provider, set as the global one, configured by the
    standard variables:

    * ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource;
    * ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler (default: parent
      based, always on);
    * ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default), ``console`` or ``none``, comma
      separated; ``otlp`` follows ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (or
      ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``, the default, or ``grpc``) and the
      other ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, ...).

    Raises:
        ValueError: opentelemetry-sdk or the OTLP exporter is not installed, or an unknown
            exporter or protocol is named (the message says what to install or set).
    """
    env = os.environ if environ is None else environ
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ValueError(
            "no tracer provider is configured and opentelemetry-sdk is not installed: "
            "pip install 'wsevents[tracing]'"
        ) from None
    exporters: list[Any] = []
    for name in (n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")):
        if name == "none" or not name:
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter(env))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}: use otlp, console or none")
    provider = SdkTracerProvider(resource=Resource.create())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    protocol = protocol.strip() or "http/protobuf"
    found = _OTLP_EXPORTERS.get(protocol)
    if found is None:
        raise ValueError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc")
    module_name, package = found
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER=otlp ({protocol}) needs {package}: pip install {package}, "
            "or set OTEL_TRACES_EXPORTER=console or none"
        ) from None
    return module.OTLPSpanExporter()
