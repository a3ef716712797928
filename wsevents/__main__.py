"""Command line: ``python -m wsevents run MODULE:ATTR [options]`` and
``python -m wsevents asyncapi MODULE:ATTR [--yaml]``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import inspect
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__

__all__ = ["main"]

USAGE_ERROR = 2

log = logging.getLogger("wsevents")


class UsageError(Exception):
    """An option or the target cannot be used; the message is shown to the user."""


class TargetError(UsageError):
    """The MODULE:ATTR target cannot be loaded or is not servable."""


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a usage error on one line, with where to find help."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 to 65535)")
    return port


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} must start with '/', e.g. /{text}")
    return text


def _origin(text: str) -> str:
    if text != "*" and "://" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an origin; an origin looks like https://{text}"
        )
    return text


def _proxy(text: str) -> str:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)"
        ) from None
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m wsevents", description="wsevents tools")
    parser.add_argument("--version", action="version", version=f"wsevents {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="serve a WsApp or an aiohttp Application",
        description="Serve a WsApp or an aiohttp Application until Ctrl-C or SIGTERM.",
        formatter_class=_HelpFormatter,
    )
    run.add_argument(
        "target",
        help="MODULE:ATTR (e.g. examples.reference_app:app): a WsApp, an aiohttp Application "
        "or a factory returning one",
    )
    run.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    run.add_argument("--port", type=_port, default=8080, help="TCP port (0: any free port)")
    run.add_argument(
        "--path", type=_path, default="/ws", help="WebSocket endpoint (for a WsApp target)"
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level",
    )
    run.add_argument(
        "--log-format",
        default="plain",
        choices=["plain", "text", "json"],
        help="log lines: plain (time LEVEL logger: message), text (key=value pairs) or json "
        "(one object per line); text and json carry the connection id, close code and reason",
    )
    run.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at GET /metrics on the same port (needs: pip install "
        "'wsevents[metrics]')",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve the Prometheus metrics on this port of --host instead (its own HTTP "
        "server, in a thread)",
    )
    run.add_argument(
        "--admin-token",
        metavar="TOKEN",
        default=os.environ.get("WSEVENTS_ADMIN_TOKEN") or None,
        help="serve the read-only admin snapshot at GET /admin/snapshot to requests with "
        "'Authorization: Bearer TOKEN' (default: $WSEVENTS_ADMIN_TOKEN; unset: not served)",
    )
    run.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop"],
        help="event loop implementation (uvloop needs: pip install 'wsevents[uvloop]')",
    )
    run.add_argument(
        "--allow-origin",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="browser origin allowed to connect, e.g. https://app.example.com; repeat it for "
        "several, or give '*' for any (default: an Origin must match the Host)",
    )
    run.add_argument(
        "--trusted-proxy",
        action="append",
        type=_proxy,
        metavar="ADDRESS",
        help="address or network (CIDR) of a reverse proxy whose X-Forwarded-For is believed "
        "for the client's IP address; repeat it for several (default: none)",
    )
    engine = run.add_mutually_exclusive_group()
    engine.add_argument(
        "--redis-url",
        metavar="URL",
        help="broadcast through Redis to the other instances (redis://, rediss://, unix://, "
        "redis+cluster://host:port[,host:port...] for a Redis Cluster)",
    )
    engine.add_argument(
        "--nats-url",
        metavar="URL",
        help="broadcast through NATS to the other instances, stores on JetStream "
        "(nats://host:port, several comma separated; needs: pip install 'wsevents[nats]')",
    )
    run.add_argument(
        "--redis-connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for Redis at start",
    )
    run.add_argument(
        "--redis-fail-fast",
        action="store_true",
        help="exit with status 2 when Redis does not answer at start, instead of serving "
        "alone and retrying in the background",
    )
    run.add_argument(
        "--nats-connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for NATS at start",
    )
    run.add_argument(
        "--nats-fail-fast",
        action="store_true",
        help="exit with status 2 when NATS does not answer at start, instead of serving "
        "alone and retrying in the background",
    )
    run.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so that several processes can listen on the same port "
        "(the kernel spreads new connections over them; Linux, BSD)",
    )
    run.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry spans for every message (pip install 'wsevents[tracing]'), to "
        "the global tracer provider, or to one made from the OTEL_* environment variables "
        "when none is set (OTEL_TRACES_EXPORTER: otlp, console or none)",
    )
    asyncapi = sub.add_parser(
        "asyncapi",
        help="print the AsyncAPI 3.0 document of a WsApp",
        description="Print the AsyncAPI 3.0 document of a WsApp's routes and declared pushes "
        "(JSON, or YAML with --yaml) on stdout.",
        formatter_class=_HelpFormatter,
    )
    asyncapi.add_argument(
        "target",
        help="MODULE:ATTR (e.g. examples.reference_app:app): a WsApp, an aiohttp Application "
        "with one attached, or a factory returning one",
    )
    asyncapi.add_argument("--yaml", action="store_true", help="write YAML instead of JSON")
    asyncapi.add_argument("--title", help="info.title (default: the target)")
    asyncapi.add_argument("--app-version", default="0.0.0", metavar="VERSION", help="info.version")
    asyncapi.add_argument("--description", help="text at the start of info.description")
    asyncapi.add_argument(
        "--server",
        metavar="URL",
        help="the server to describe, a ws:// or wss:// URL such as ws://localhost:8080/ws",
    )
    return parser


def _asyncapi(args: argparse.Namespace) -> str:
    """The document of ``args.target``, as text.

    Raises:
        UsageError: the target cannot be loaded, has no WsApp, or ``--server`` is bad.
    """
    import json

    from .asyncapi import to_yaml

    ws_app = _ws_app_of(load_target(args.target), "asyncapi")
    try:
        document = ws_app.asyncapi(
            title=args.title or args.target,
            version=args.app_version,
            description=args.description,
            server=args.server,
        )
    except ValueError as exc:
        raise UsageError(f"bad --server: {exc}") from None
    if args.yaml:
        return to_yaml(document)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _ws_app_of(target: Any, option: str) -> Any:
    """The WsApp of ``target``: itself, or the one attached to an aiohttp Application."""
    from .app import WsApp
    from .server import WS_APP

    ws_app = target if isinstance(target, WsApp) else target.get(WS_APP)
    if not isinstance(ws_app, WsApp):
        raise TargetError(f"{option} needs a WsApp, or an aiohttp Application with one attached")
    return ws_app


def plug_redis(
    target: Any, url: str, *, connect_timeout: float = 5.0, fail_fast: bool = False
) -> None:
    """Give the target's WsApp a RedisTransport for ``url`` (before it starts).

    For an aiohttp Application, the WsApp is the one attached to it (``app[WS_APP]``).

    Raises:
        TargetError: no WsApp to plug into, or a bad URL.
    """
    from .transports.redis import RedisTransport, redact_url

    ws_app = _ws_app_of(target, "--redis-url")
    try:
        transport = RedisTransport.from_url(
            url, connect_timeout=connect_timeout, fail_fast=fail_fast
        )
    except ValueError as exc:
        password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
        reason = str(exc).replace(password, "***") if password else str(exc)
        raise TargetError(f"bad --redis-url {redact_url(url)}: {reason}") from exc
    if ws_app.transport is not None:
        log.warning("--redis-url replaces the transport the app was created with")
    ws_app.set_transport(transport)


def plug_nats(
    target: Any, url: str, *, connect_timeout: float = 5.0, fail_fast: bool = False
) -> None:
    """Give the target's WsApp a NatsTransport for ``url`` (before it starts).

    Raises:
        TargetError: no WsApp to plug into, or a bad URL.
        UsageError: nats-py is not installed.
    """
    ws_app = _ws_app_of(target, "--nats-url")
    try:
        from .transports.nats import NatsTransport, redact_url
    except ImportError:
        raise UsageError("--nats-url needs nats-py: pip install 'wsevents[nats]'") from None
    try:
        transport = NatsTransport.from_url(
            url, connect_timeout=connect_timeout, fail_fast=fail_fast
        )
    except ValueError as exc:
        raise TargetError(f"bad --nats-url {redact_url(url)}: not a NATS URL") from exc
    if ws_app.transport is not None:
        log.warning("--nats-url replaces the transport the app was created with")
    ws_app.set_transport(transport)


def serve_metrics_port(target: Any, host: str, port: int) -> None:
    """Enable the metrics of the target's WsApp and export them on ``host:port`` with
    ``prometheus_client.start_http_server`` (a daemon thread).

    Raises:
        TargetError: no WsApp.
        UsageError: prometheus-client is missing, or the port cannot be bound.
    """
    ws_app = _ws_app_of(target, "--metrics-port")
    prometheus = _require_prometheus()
    metrics = ws_app.metrics if ws_app.metrics is not None else ws_app.enable_metrics()
    registry = prometheus.REGISTRY
    if metrics.multiprocess:
        # The app writes its counters every SYNC_INTERVAL; this thread only reads the files.
        registry = prometheus.CollectorRegistry()
        importlib.import_module("prometheus_client.multiprocess").MultiProcessCollector(registry)
    try:
        prometheus.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-port: {_bind_error(host, port, exc)}") from None


def plug_operability(target: Any, *, metrics: bool = False, admin_token: str | None = None) -> Any:
    """The aiohttp application to serve for ``target``, with the health probes
    (``/healthz``, ``/readyz``), and ``/metrics`` and ``/admin/snapshot`` when asked.

    A WsApp target is mounted at ``path`` on a new application first (see [`_serve`][]).

    Raises:
        TargetError: ``--metrics`` or ``--admin-token`` with an aiohttp Application that
            has no WsApp attached.
        UsageError: ``--metrics`` without prometheus-client installed.
    """
    from .app import WsApp
    from .server import WS_APP, add_admin_routes, add_health_routes, add_metrics_route

    app = target
    ws_app = app.get(WS_APP) if not isinstance(app, WsApp) else None
    if not isinstance(ws_app, WsApp):
        if metrics:
            _ws_app_of(target, "--metrics")
        if admin_token:
            _ws_app_of(target, "--admin-token")
        return app
    add_health_routes(app, ws_app)
    if metrics:
        _require_prometheus()
        add_metrics_route(app, ws_app)
    if admin_token:
        add_admin_routes(app, ws_app, admin_token)
    return app


def plug_tracing(target: Any) -> None:
    """Trace the target's WsApp (see ``wsevents.tracing.provider_from_env``).

    Raises:
        TargetError: no WsApp to trace.
        UsageError: OpenTelemetry, or the exporter the environment names, is missing.
    """
    ws_app = _ws_app_of(target, "--tracing")
    try:
        from .tracing import provider_from_env
    except ImportError:
        raise UsageError("--tracing needs OpenTelemetry: pip install 'wsevents[tracing]'") from None
    try:
        provider = provider_from_env()
    except ValueError as exc:
        raise UsageError(f"--tracing: {exc}") from None
    ws_app.enable_tracing(provider)


def plug_origins(target: Any, origins: Sequence[str]) -> None:
    """Set the browser origins allowed to connect to the target's WsApp (``"*"``: any).

    Raises:
        TargetError: no WsApp to apply them to.
    """
    ws_app = _ws_app_of(target, "--allow-origin")
    # Normalised as WsApp(allowed_origins=...) does.
    ws_app.allowed_origins = tuple(o.rstrip("/").lower() for o in origins)


def plug_trusted_proxies(target: Any, proxies: Sequence[str]) -> None:
    """Set the reverse proxies whose ``X-Forwarded-For`` the target's WsApp believes.

    Raises:
        TargetError: no WsApp to apply them to.
    """
    ws_app = _ws_app_of(target, "--trusted-proxy")
    # As WsApp(trusted_proxies=...) has them (each checked by _proxy).
    ws_app.trusted_proxies = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies)


def _file_path_hint(module_name: str, attr: str) -> str | None:
    """For a target given as a file path, the module path to use instead."""
    if "/" not in module_name and "\\" not in module_name and not module_name.endswith(".py"):
        return None
    path = module_name.replace("\\", "/").removesuffix(".py")
    while path.startswith("./"):
        path = path[2:]
    module = ".".join(part for part in path.split("/") if part)
    return f"use a module path such as {module}:{attr or 'app'}"


def _required_parameters(fn: Any) -> list[str]:
    """Parameters ``fn`` cannot be called without (empty when unknown)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [
        name
        for name, p in signature.parameters.items()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def load_target(spec: str, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Import ``MODULE:ATTR`` and return a WsApp or an aiohttp Application.

    A callable that is neither is called as a factory, without arguments. An async factory
    is awaited on ``loop`` (a throwaway loop when None): serve on that same loop, since
    what the factory creates (clients, pools, tasks) is bound to it.

    Raises:
        TargetError: with a message for the user.
    """
    from aiohttp import web

    from .app import WsApp

    module_name, sep, attr = spec.partition(":")
    hint = _file_path_hint(module_name, attr)
    if hint is not None:
        raise TargetError(f"{spec!r} is a file path; {hint}")
    if not sep or not module_name or not attr:
        example = f"{module_name or 'mymodule'}:app"
        raise TargetError(f"target must look like MODULE:ATTR (e.g. {example}), got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, WsApp | web.Application) and callable(obj):
        required = _required_parameters(obj)
        if required:
            raise TargetError(
                f"{spec} needs arguments ({', '.join(required)}): it is not a WsApp, an aiohttp "
                "Application or a factory, which is called without arguments"
            )
        obj = obj()
        if inspect.isawaitable(obj):
            obj = asyncio.run(_await(obj)) if loop is None else loop.run_until_complete(obj)
    if not isinstance(obj, WsApp | web.Application):
        raise TargetError(
            f"{spec} is a {type(obj).__name__}, not a WsApp, an aiohttp Application "
            "or a factory returning one"
        )
    return obj


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            # Imported by name: uvloop is an optional extra, not needed to type-check.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            msg = "--loop uvloop needs uvloop: pip install 'wsevents[uvloop]'"
            raise UsageError(msg) from None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def bind(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind a listening-to-be socket per address of ``host``, as aiohttp would.

    Binding before serving turns a port in use into an error before anything starts, and
    lets "serving" be logged only once the sockets are bound. With ``reuse_port``, the
    sockets get ``SO_REUSEPORT``: other processes that set it too may bind the same port.

    Raises:
        UsageError: the host does not resolve, an address cannot be bound, or
            ``reuse_port`` is not supported here.
    """
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--reuse-port is not supported on this platform")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"cannot resolve --host {host}: {exc}") from None
    bound: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise UsageError(_bind_error(host, port, exc)) from None
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind_error(host: str, port: int, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    text = f"cannot listen on {host}:{port}: {reason}"
    if exc.errno == errno.EADDRINUSE:
        return f"{text} (another server runs there: choose another --port, or stop it)"
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return f"{text} (ports below 1024 need privileges: choose a --port from 1024)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{text} (--host is not an address of this machine)"
    return text


def _serve(
    target: Any,
    socks: list[socket.socket],
    *,
    spec: str,
    host: str,
    path: str,
    loop: asyncio.AbstractEventLoop,
    metrics: bool = False,
    admin_token: str | None = None,
) -> None:
    """Serve on the bound sockets until Ctrl-C or SIGTERM, then shut down gracefully.

    Raises:
        UsageError: as [`plug_operability`][].
    """
    from aiohttp import web

    from .app import WsApp
    from .server import WS_APP, build_app

    app = build_app(target, path) if isinstance(target, WsApp) else target
    app = plug_operability(app, metrics=metrics, admin_token=admin_token)
    ws_app = app.get(WS_APP)
    port = socks[0].getsockname()[1]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = f"ws://{authority}{path}" if isinstance(target, WsApp) else f"http://{authority}"

    def serving(_: str) -> None:  # aiohttp calls it once every socket listens
        log.info("serving %s on %s", spec, where)

    web.run_app(
        app,
        sock=socks,
        access_log=None,
        print=serving,
        shutdown_timeout=ws_app.shutdown_timeout + 5.0 if ws_app is not None else 10.0,
        handle_signals=True,
        loop=loop,
    )


def _require_prometheus() -> Any:
    from .metrics import require_prometheus_client

    try:
        return require_prometheus_client()
    except ImportError:
        msg = "--metrics needs prometheus-client: pip install 'wsevents[metrics]'"
        raise UsageError(msg) from None


def _configure_logging(level: str, style: str) -> None:
    if style == "plain":
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return
    from .logs import LogFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter("json" if style == "json" else "text"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "asyncapi":
        try:
            text = _asyncapi(args)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE_ERROR
        sys.stdout.write(text)
        return 0
    _configure_logging(args.log_level, args.log_format)
    from .exceptions import TransportError

    socks: list[socket.socket] = []
    loop: asyncio.AbstractEventLoop | None = None
    try:
        loop = _new_loop(args.loop)  # serving runs on it, then closes it
        socks = bind(args.host, args.port, reuse_port=args.reuse_port)
        target = load_target(args.target, loop)
        if args.metrics:
            _require_prometheus()
        if args.metrics_port is not None:
            serve_metrics_port(target, args.host, args.metrics_port)
        if args.allow_origin:
            plug_origins(target, args.allow_origin)
        if args.tracing:
            plug_tracing(target)
        if args.trusted_proxy:
            plug_trusted_proxies(target, args.trusted_proxy)
        if args.redis_url:
            plug_redis(
                target,
                args.redis_url,
                connect_timeout=args.redis_connect_timeout,
                fail_fast=args.redis_fail_fast,
            )
        if args.nats_url:
            plug_nats(
                target,
                args.nats_url,
                connect_timeout=args.nats_connect_timeout,
                fail_fast=args.nats_fail_fast,
            )
    except UsageError as exc:
        for sock in socks:
            sock.close()
        if loop is not None:
            loop.close()
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        _serve(
            target,
            socks,
            spec=args.target,
            host=args.host,
            path=args.path,
            loop=loop,
            metrics=args.metrics,
            admin_token=args.admin_token,
        )
    except (TransportError, UsageError) as exc:  # --redis/nats-fail-fast: no answer
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    finally:
        for sock in socks:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
