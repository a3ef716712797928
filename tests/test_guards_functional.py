"""Guards (app, group, route), router groups, the unhandled-message fallback and the route
in the message scope, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsevents import (
    CallNext,
    MessageScope,
    Route,
    RoutingError,
    WsApp,
    WsError,
    use_route_params,
    use_ws_connection,
    use_ws_message,
)

FORBIDDEN = {"code": 403, "message": "Forbidden"}
INTERNAL = {"code": 500, "message": "Internal Error"}


def recording(log: list[str], name: str, verdict: Any = None) -> Any:
    def guard() -> Any:
        log.append(name)
        return verdict

    guard.__name__ = name
    return guard


def async_recording(log: list[str], name: str, verdict: Any = None) -> Any:
    async def guard() -> Any:
        await asyncio.sleep(0)
        log.append(name)
        return verdict

    guard.__name__ = name
    return guard


# -- order --------------------------------------------------------------------------------


@pytest.mark.parametrize("guard_kind", [recording, async_recording])
async def test_guards_run_app_then_outer_group_then_inner_group_then_route(
    ws_client, guard_kind
) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)
    outer = ws.group("/a", guards=[guard_kind(log, "outer")])
    inner = outer.group("/b", guards=[guard_kind(log, "inner")])

    @inner.on_message("rpc", "/c", guards=[guard_kind(log, "route1"), guard_kind(log, "route2")])
    def handler() -> str:
        log.append("handler")
        return "done"

    # Added after the routes: an app guard still applies to them.
    ws.add_guard(guard_kind(log, "app"))

    client = await ws_client(ws)
    assert await client.call("rpc", "/a/b/c") == "done"
    assert log == ["app", "outer", "inner", "route1", "route2", "handler"]


async def test_sync_and_async_guards_mix_in_one_chain(ws_client) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)

    @ws.on_message(
        "rpc",
        "/mixed",
        guards=[recording(log, "sync"), async_recording(log, "async"), recording(log, "last")],
    )
    async def handler() -> str:
        log.append("handler")
        return "ok"

    client = await ws_client(ws)
    assert await client.call("rpc", "/mixed") == "ok"
    assert log == ["sync", "async", "last", "handler"]


# -- verdicts -----------------------------------------------------------------------------


@pytest.mark.parametrize("guard_kind", [recording, async_recording])
@pytest.mark.parametrize("level", ["app", "group", "route"])
async def test_a_guard_returning_false_replies_403_forbidden_and_stops_the_chain(
    ws_client, guard_kind, level
) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)
    refuse = guard_kind(log, "refuse", False)
    group = ws.group("/g", guards=[refuse] if level == "group" else [])
    if level == "app":
        ws.add_guard(refuse)

    @group.on_message(
        "rpc", "/x", guards=[refuse, recording(log, "after")] if level == "route" else []
    )
    def handler() -> str:
        log.append("handler")
        return "ran"

    client = await ws_client(ws)
    assert await client.request("rpc", "/g/x", message_id=7) == {"id": 7, "error": FORBIDDEN}
    assert log == ["refuse"]


@pytest.mark.parametrize("verdict", [None, True])
async def test_a_guard_returning_none_or_true_lets_the_message_through(ws_client, verdict) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/open", guards=[recording(log, "guard", verdict)])
    def handler() -> str:
        return "ran"

    client = await ws_client(ws)
    assert await client.call("rpc", "/open") == "ran"
    assert log == ["guard"]


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_guard_raising_ws_error_passes_its_code_and_message(ws_client, is_async) -> None:
    ws = WsApp(heartbeat=0)

    def deny() -> None:
        raise WsError(401, "Unauthorized")

    async def deny_async() -> None:
        raise WsError(401, "Unauthorized")

    @ws.on_message("rpc", "/x", guards=[deny_async if is_async else deny])
    def handler() -> str:
        raise AssertionError("the handler must not run")

    client = await ws_client(ws)
    reply = await client.request("rpc", "/x", message_id="a")
    assert reply == {"id": "a", "error": {"code": 401, "message": "Unauthorized"}}


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("level", ["app", "route"])
async def test_a_crashing_guard_replies_500_logs_and_leaks_nothing(
    ws_client, caplog, is_async, level
) -> None:
    ws = WsApp(heartbeat=0)

    def explode() -> bool:
        raise RuntimeError("secret at /srv/guard.py")

    async def explode_async() -> bool:
        raise RuntimeError("secret at /srv/guard.py")

    guard = explode_async if is_async else explode
    if level == "app":
        ws.add_guard(guard)

    @ws.on_message("rpc", "/x", guards=[guard] if level == "route" else [])
    def handler() -> str:
        raise AssertionError("the handler must not run")

    client = await ws_client(ws)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        await client.send_raw('{"event": "rpc", "path": "/x", "id": 1}')
        frame = await client.next_message()
    assert frame == {"id": 1, "error": INTERNAL}
    crashes = [r for r in caplog.records if r.exc_info is not None]
    assert len(crashes) == 1
    assert "secret at /srv/guard.py" in str(crashes[0].exc_info[1])
    # The connection is unharmed.
    ws2 = await client.request("rpc", "/nowhere", message_id=2)
    assert ws2 == {"id": 2, "error": {"code": 404, "message": "Not found"}}


async def test_a_refusal_without_id_is_dropped_silently(ws_client) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/closed", guards=[recording(log, "refuse", False)])
    def closed() -> None:
        log.append("closed")

    @ws.on_message("rpc", "/open")
    def opened() -> str:
        return "open"

    client = await ws_client(ws)
    await client.send("rpc", "/closed", "no id")
    # Frames of one connection are handled in order: a reply to the refusal would come first.
    assert await client.call("rpc", "/open") == "open"
    assert client.pending_messages() == []
    assert log == ["refuse"]


async def test_guards_use_composables(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    def owner_only() -> bool:
        request = use_ws_connection().request
        role = request.query.get("role") if request is not None else None
        return role == "owner" or use_route_params().get("id") == use_ws_message().data

    @ws.on_message("rpc", "/items/:id", guards=[owner_only])
    def item() -> str:
        return "item"

    owner = await ws_client(ws, query={"role": "owner"})
    other = await ws_client(ws)
    assert await owner.call("rpc", "/items/1") == "item"
    assert await other.call("rpc", "/items/2", "2") == "item"
    assert await other.request("rpc", "/items/3", "x", message_id=1) == {
        "id": 1,
        "error": FORBIDDEN,
    }


def test_a_guard_must_be_callable() -> None:
    ws = WsApp(heartbeat=0)
    with pytest.raises(TypeError, match="guard"):
        ws.add_guard("admin")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="guard"):
        ws.group("/a", guards=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="guard"):
        ws.add_message_handler("rpc", "/x", lambda: None, guards=[None])  # type: ignore[list-item]


# -- the fast path ------------------------------------------------------------------------


def test_a_route_without_guards_runs_its_handler_unwrapped() -> None:
    ws = WsApp(heartbeat=0)

    def plain() -> None:
        return None

    def guarded() -> None:
        return None

    ws.add_message_handler("rpc", "/plain", plain)
    ws.add_message_handler("rpc", "/guarded", guarded, guards=[lambda: True])
    ws.add_guard(lambda: True)  # app guards run in the chain, not in the route
    plain_match = ws.router.match("rpc", "/plain")
    guarded_match = ws.router.match("rpc", "/guarded")
    assert plain_match is not None and guarded_match is not None
    assert plain_match.handler.fn is plain
    assert guarded_match.handler.fn is not guarded
    assert guarded_match.handler.is_async is False  # sync guards, sync handler: still inline


# -- groups -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "pattern", "expected"),
    [
        ("/admin", "/stats", "/admin/stats"),
        ("/admin/", "/stats", "/admin/stats"),
        ("/admin//", "/stats/", "/admin/stats/"),
        ("/", "/stats", "/stats"),
        ("/admin", "/", "/admin"),
        ("/", "/", "/"),
        ("/users/:id", "/posts/:post", "/users/:id/posts/:post"),
    ],
)
async def test_a_group_joins_its_prefix_and_the_pattern(
    ws_client, prefix, pattern, expected
) -> None:
    ws = WsApp(heartbeat=0)
    group = ws.group(prefix)

    @group.on_message("rpc", pattern)
    def handler() -> dict[str, str]:
        return dict(use_route_params().params)

    assert [(r.event, r.pattern) for r in ws.routes()] == [("rpc", expected)]
    client = await ws_client(ws)
    concrete = expected.replace(":id", "7").replace(":post", "9")
    assert await client.call("rpc", concrete) is not None


@pytest.mark.parametrize("bad", ["admin", ""])
def test_a_group_prefix_or_pattern_without_leading_slash_is_refused(bad) -> None:
    ws = WsApp(heartbeat=0)
    with pytest.raises(RoutingError):
        ws.group(bad)
    with pytest.raises(RoutingError):
        ws.group("/admin").add_message_handler("rpc", bad, lambda: None)


async def test_nested_groups_join_prefixes_and_inherit_guards(ws_client) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)
    api = ws.group("/api/", guards=[recording(log, "api")])
    admin = api.group("/admin", guards=[recording(log, "admin")])
    public = api.group("/public")

    @admin.on_message("rpc", "/stats")
    def stats() -> str:
        return "stats"

    @public.on_message("rpc", "/hello")
    def hello() -> str:
        return "hello"

    routes = {r.pattern: r for r in ws.routes()}
    assert set(routes) == {"/api/admin/stats", "/api/public/hello"}
    assert [g.__name__ for g in routes["/api/admin/stats"].guards] == ["api", "admin"]
    assert [g.__name__ for g in routes["/api/public/hello"].guards] == ["api"]
    client = await ws_client(ws)
    assert await client.call("rpc", "/api/admin/stats") == "stats"
    assert log == ["api", "admin"]
    assert await client.call("rpc", "/api/public/hello") == "hello"
    assert log == ["api", "admin", "api"]


async def test_a_group_guard_does_not_touch_routes_outside_the_group(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    admin = ws.group("/admin", guards=[lambda: False])

    @admin.on_message("rpc", "/stats")
    def stats() -> str:
        return "stats"

    @ws.on_message("rpc", "/admin-like")
    def lookalike() -> str:
        return "free"

    client = await ws_client(ws)
    assert await client.call("rpc", "/admin-like") == "free"
    assert await client.request("rpc", "/admin/stats", message_id=1) == {
        "id": 1,
        "error": FORBIDDEN,
    }


# -- route metadata -----------------------------------------------------------------------


def test_routes_lists_every_route_with_its_metadata_in_registration_order() -> None:
    ws = WsApp(heartbeat=0)

    def is_admin() -> bool:
        return True

    admin = ws.group("/admin", guards=[is_admin])

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        """Return the data.

        More text that is not the summary.
        """
        return None

    @admin.on_message("rpc", "/stats")
    async def stats() -> None:
        return None

    routes = ws.routes()
    assert all(isinstance(r, Route) for r in routes)
    assert [(r.event, r.pattern, r.handler, r.guards) for r in routes] == [
        ("rpc", "/echo", echo, ()),
        ("rpc", "/admin/stats", stats, (is_admin,)),
    ]
    assert routes[0].summary == "Return the data."
    assert routes[1].summary is None
    assert (routes[0].data, routes[0].reply, dict(routes[0].params)) == (None, None, {})
    with pytest.raises(AttributeError):
        routes[0].pattern = "/other"  # type: ignore[misc]


# -- interceptors and the route in the scope ------------------------------------------------


async def test_an_interceptor_observes_a_guard_refusal_and_sees_the_route_pattern(
    ws_client,
) -> None:
    ws = WsApp(heartbeat=0)
    seen: list[tuple[str, str, str, int]] = []
    order: list[str] = []

    @ws.intercept
    async def metrics(scope: MessageScope, call_next: CallNext) -> Any:
        order.append("interceptor")
        code = 200
        try:
            return await call_next()
        except WsError as exc:
            code = exc.code
            raise
        finally:
            seen.append((scope.route.event, scope.route.pattern, scope.message.path, code))

    @ws.on_message("rpc", "/users/:id", guards=[recording(order, "guard", False)])
    def user() -> None:
        order.append("handler")

    @ws.on_message("rpc", "/rooms/:room")
    def room() -> str:
        return "ok"

    client = await ws_client(ws)
    assert await client.request("rpc", "/users/42", message_id=1) == {"id": 1, "error": FORBIDDEN}
    assert await client.call("rpc", "/rooms/lobby") == "ok"
    assert seen == [
        ("rpc", "/users/:id", "/users/42", 403),
        ("rpc", "/rooms/:room", "/rooms/lobby", 200),
    ]
    assert order == ["interceptor", "guard", "interceptor"]


async def test_app_guards_run_inside_interceptors_added_after_them(ws_client) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)
    ws.add_guard(recording(log, "guard"))

    @ws.intercept
    async def outer(scope: MessageScope, call_next: CallNext) -> Any:
        log.append("interceptor")
        return await call_next()

    @ws.on_message("rpc", "/x")
    def handler() -> str:
        log.append("handler")
        return "ok"

    client = await ws_client(ws)
    assert await client.call("rpc", "/x") == "ok"
    assert log == ["interceptor", "guard", "handler"]


async def test_the_guard_decorator_registers_an_app_guard(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.guard
    async def closed() -> bool:
        return False

    @ws.on_message("rpc", "/x")
    def handler() -> str:
        return "ran"

    assert closed.__name__ == "closed"  # the decorator returns the function
    client = await ws_client(ws)
    assert await client.request("rpc", "/x", message_id=1) == {"id": 1, "error": FORBIDDEN}


# -- the unhandled-message fallback ---------------------------------------------------------


async def test_the_fallback_receives_unrouted_messages_and_replies(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    received: list[tuple[str, str, Any]] = []

    @ws.on_message("rpc", "/known")
    def known() -> str:
        return "known"

    @ws.on_unhandled
    def fallback() -> dict[str, str]:
        msg = use_ws_message()
        received.append((msg.event, msg.path, msg.data))
        return {"unhandled": msg.path}

    client = await ws_client(ws)
    assert await client.call("rpc", "/known") == "known"
    assert await client.call("other", "/known", 1) == {"unhandled": "/known"}
    assert await client.call("rpc", "/nowhere/x") == {"unhandled": "/nowhere/x"}
    await client.send("rpc", "/silent", "no id")
    # Handled in order: a reply to the message without id would arrive before this one.
    assert await client.call("rpc", "/known") == "known"
    assert client.pending_messages() == []
    assert received == [
        ("other", "/known", 1),
        ("rpc", "/nowhere/x", None),
        ("rpc", "/silent", "no id"),
    ]


async def test_an_async_fallback_may_raise_ws_error(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_unhandled
    async def fallback() -> None:
        await asyncio.sleep(0)
        raise WsError(501, "Not implemented: " + use_ws_message().path)

    client = await ws_client(ws)
    reply = await client.request("rpc", "/later", message_id=3)
    assert reply == {"id": 3, "error": {"code": 501, "message": "Not implemented: /later"}}
    await client.send("rpc", "/later")
    reply = await client.request("rpc", "/later2", message_id=4)
    assert reply == {"id": 4, "error": {"code": 501, "message": "Not implemented: /later2"}}
    assert client.pending_messages() == []


async def test_the_fallback_runs_inside_interceptors_and_app_guards(ws_client) -> None:
    log: list[str] = []
    ws = WsApp(heartbeat=0)
    routes: list[tuple[str, str]] = []

    @ws.intercept
    async def record(scope: MessageScope, call_next: CallNext) -> Any:
        routes.append((scope.route.event, scope.route.pattern))
        return await call_next()

    ws.add_guard(recording(log, "app"))

    @ws.on_unhandled
    def fallback() -> str:
        log.append("fallback")
        return "fallback"

    client = await ws_client(ws)
    assert await client.call("rpc", "/nowhere") == "fallback"
    assert log == ["app", "fallback"]
    assert routes == [("*", "*")]


async def test_without_a_fallback_unrouted_messages_reply_404(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    client = await ws_client(ws)
    reply = await client.request("rpc", "/nowhere", message_id=1)
    assert reply == {"id": 1, "error": {"code": 404, "message": "Not found"}}


def test_a_second_fallback_is_refused() -> None:
    ws = WsApp(heartbeat=0)

    def first() -> None:
        return None

    assert ws.on_unhandled(first) is first
    with pytest.raises(RoutingError, match="already"):
        ws.on_unhandled(lambda: None)
