"""The browser client module and the chat example in a real headless Chromium.

Chromium is driven by Selenium through Debian's chromedriver (``/usr/bin/chromedriver``);
Selenium Manager never runs, so nothing is downloaded. The tests skip only when
Chromium or chromedriver is not installed (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from examples import reference_app
from examples.chat.server import create_app as create_chat_app
from wsevents import WsApp
from wsevents.client import WsClient
from wsevents.server import add_client_route

from .tcp_proxy import TcpProxy
from .test_client_recovery_functional import repeating_app
from .test_client_resume_functional import SessionServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img" / "chat.png"
# Refresh docs/img/chat.png from the chat test: WSEVENTS_UPDATE_DOCS_IMG=1 pytest -m browser
UPDATE_DOCS_IMG = os.environ.get("WSEVENTS_UPDATE_DOCS_IMG") == "1"

MISSING = [
    name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{' and '.join(MISSING)} not installed (apt-get install chromium chromium-driver)",
    ),
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=900,760",
]

TEST_PAGE = "<!doctype html><meta charset='utf-8'><title>wsevents browser test</title>"


class ServerThread:
    """An aiohttp application served on 127.0.0.1 (a free port) from its own loop."""

    def __init__(self, make_app: Callable[[], web.Application], port: int = 0) -> None:
        self._make_app = make_app
        self._port = port
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="browser-test-server")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the test server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the test server did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self._make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self._port)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


class RefusingServer:
    """A bare TCP server that answers a WebSocket handshake and refuses it in the same write.

    The 101 response and the close frame leave in one segment, so the browser learns of
    the close while it is still handling the open: the tightest timing a refusal can have.
    ``ws://127.0.0.1:<port>/1008`` closes with 1008 "Unauthorized", ``/1011`` with 1011
    "Internal Error".
    """

    REFUSALS: ClassVar[dict[str, tuple[int, str]]] = {
        "/1008": (1008, "Unauthorized"),
        "/1011": (1011, "Internal Error"),
    }

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RefusingServer:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the refusing server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the refusing server did not stop"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            key = headers.get("Sec-WebSocket-Key", headers.get("sec-websocket-key", ""))
            accept = base64.b64encode(
                hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            ).decode()
            code, reason = self.REFUSALS[path]
            payload = code.to_bytes(2, "big") + reason.encode()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept.encode()
                + b"\r\n\r\n"
                + bytes([0x88, len(payload)])
                + payload
            )
            await writer.drain()
            await reader.read(1024)  # the browser's close frame (or EOF)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def reference_web_app() -> web.Application:
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=TEST_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    add_client_route(app)
    reference_app.app.attach(app, "/ws")
    return app


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # An explicit driver path: Selenium Manager (which would download drivers) never runs.
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_script_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def reference_server() -> Iterator[ServerThread]:
    with ServerThread(reference_web_app) as server:
        yield server


def run_js(driver: WebDriver, body: str) -> Any:
    """Run ``body`` (an async function body that may ``return``) in the page; its result."""
    script = (
        "const done = arguments[arguments.length - 1];\n"
        "(async () => {\n"
        'const { WsClient, WsClientError, Backoff } = await import("/wsevents-client.js");\n'
        f"{body}\n"
        "})().then((value) => done({ value }), (err) => done({ error: String(err && err.stack"
        " || err) }));"
    )
    result = driver.execute_async_script(script)
    assert "error" not in result, result["error"]
    return result.get("value")


ERRORS_JS = """
const errorOf = async (promise) => {
  try { await promise; return null; }
  catch (err) { return [err instanceof WsClientError, err.code, err.message]; }
};
"""


def test_calls_and_error_codes(driver: WebDriver, reference_server: ServerThread) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        ERRORS_JS
        + """
const client = new WsClient("/ws");
const out = {};
out.echo = await client.call("rpc", "/echo", { a: [1, 2] });
out.user = await client.call("rpc", "/users/42");
out.none = await client.call("rpc", "/none");
out.custom = await errorOf(client.call("rpc", "/error/418"));
out.crash = await errorOf(client.call("rpc", "/crash"));
out.missing = await errorOf(client.call("rpc", "/no/such/route"));
out.timeout = await errorOf(client.call("rpc", "/slow", { ms: 300 }, { timeout: 20 }));
out.afterTimeout = await client.call("rpc", "/slow", { ms: 400 });
out.state = client.state;
client.close();
out.closed = await errorOf(client.call("rpc", "/echo", 1));
out.sendAfterClose = client.send("rpc", "/echo", 1);
return out;
""",
    )
    assert result == {
        "echo": {"a": [1, 2]},
        "user": {"id": "42"},
        "none": None,
        "custom": [True, 418, "custom error"],
        "crash": [True, 500, "Internal Error"],
        "missing": [True, 404, "Not found"],
        "timeout": [True, 408, "RPC timeout"],
        "afterTimeout": {"slept": 400},
        "state": "open",
        "closed": [True, 503, "Connection closed"],
        "sendAfterClose": False,
    }


def test_error_details_reach_the_browser_error(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        """
const client = new WsClient("/ws");
const detailsOf = async (promise) => {
  try { await promise; return "resolved"; }
  catch (err) { return [err instanceof WsClientError, err.code, err.message, err.details]; }
};
const out = {};
out.invalid = await detailsOf(client.call("rpc", "/typed/message", { text: "" }));
out.param = await detailsOf(client.call("rpc", "/typed/items/x"));
out.plain = await detailsOf(client.call("rpc", "/error/418"));
out.ok = await client.call("rpc", "/typed/message", { text: String.fromCodePoint(0x1f600) });
client.close();
return out;
""",
    )
    assert result == {
        "invalid": [
            True,
            400,
            "Invalid data: text: expected at least 1 character",
            [{"path": ["text"], "message": "expected at least 1 character"}],
        ],
        "param": [
            True,
            400,
            "Invalid param id: expected an integer",
            [{"path": ["params", "id"], "message": "expected an integer"}],
        ],
        "plain": [True, 418, "custom error", None],
        "ok": {"ok": True, "length": 1},
    }


def test_not_connected_without_reconnect_is_503(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        ERRORS_JS
        + """
const closes = [];
const client = new WsClient("/ws", { onClose: (code, reason) => closes.push([code, reason]) });
await client.ready();
const kicked = await errorOf(client.call("rpc", "/kick"));
const later = await errorOf(client.call("rpc", "/echo"));
return { kicked, later, closes, state: client.state, queued: client.send("x", "/y") };
""",
    )
    assert result == {
        "kicked": [True, 503, "Connection lost"],
        "later": [True, 503, "Not connected"],
        "closes": [[4000, "kicked"]],
        "state": "disconnected",
        "queued": False,
    }


def test_subscribe_push_and_listeners(driver: WebDriver, reference_server: ServerThread) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        ERRORS_JS
        + """
const alice = new WsClient("/ws");
const bob = new WsClient("/ws");
const seen = [];
const offExact = alice.on("message", "/chat/rooms/a", (p) => seen.push(["exact", p.path]));
alice.on("message", "/chat/rooms/*", (p) => seen.push(["prefix", p.path, p.params, p.data]));
const unsubscribe = await alice.subscribe("/chat/rooms/a");
await alice.subscribe("/chat/rooms/b");
const refused = await errorOf(alice.subscribe("/no/such/topic"));
const got = new Promise((resolve) => alice.on("message", "/chat/rooms/b", resolve));
await bob.call("message", "/chat/rooms/a", "to a");
await bob.call("message", "/chat/rooms/b", "to b");
await got;
offExact();
const pushFirst = [];
alice.on("notification", "/alerts", (p) => pushFirst.push(p.data));
const reply = await alice.call("rpc", "/self-push");
const pushedBeforeReply = pushFirst.length;
unsubscribe();
const subs = [...alice.subscriptions.keys()];
alice.close();
bob.close();
return { reply: unsubscribe.reply, refused, seen, pushedBeforeReply, reply2: reply, subs };
""",
    )
    assert result["reply"] == {"subscribed": True}
    assert result["refused"] == [True, 404, "Not found"]
    assert result["seen"] == [
        ["exact", "/chat/rooms/a"],
        ["prefix", "/chat/rooms/a", {"room": "a"}, "to a"],
        ["prefix", "/chat/rooms/b", {"room": "b"}, "to b"],
    ]
    assert result["pushedBeforeReply"] == 1
    assert result["reply2"] == {"ok": True}
    assert result["subs"] == ["/chat/rooms/b"]


def test_reconnect_flushes_queue_and_replays_subscriptions(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        """
const events = [];
let opens = 0;
let reopened;
const reopen = new Promise((resolve) => (reopened = resolve));
const alice = new WsClient("/ws", {
  reconnect: true, baseDelay: 10, maxDelay: 50, queueSize: 2,
  onOpen: () => { events.push("open"); if (++opens === 2) reopened(); },
  onClose: (code) => events.push(`close ${code}`),
  onReconnect: (n) => events.push(`reconnect ${n}`),
});
const bob = new WsClient("/ws");
await alice.subscribe("/chat/rooms/q");
await bob.subscribe("/chat/rooms/q");
const heard = [];
const allHeard = new Promise((resolve) => bob.on("message", "/chat/rooms/q", (p) => {
  heard.push(p.data);
  if (heard.length === 2) resolve();
}));
alice.call("rpc", "/kick").catch(() => {});
await new Promise((resolve) => alice.onClose(resolve));
const whileDown = [alice.state, alice.send("message", "/chat/rooms/q", "one"),
                   alice.send("message", "/chat/rooms/q", "two"),
                   alice.send("message", "/chat/rooms/q", "three"), alice.queued, alice.dropped];
const offline = alice.call("rpc", "/echo", "waited", 5000);
await reopen;
await allHeard;
const rooms = await alice.call("rpc", "/rooms");
const out = { events, whileDown, heard, rooms, offline: await offline, state: alice.state };
alice.close();
bob.close();
return out;
""",
    )
    assert result["whileDown"] == ["connecting", True, True, True, 2, 1]
    assert result["heard"] == ["two", "three"]  # queue of 2: the oldest was dropped
    assert result["rooms"] == ["/chat/rooms/q"]  # replayed
    assert result["offline"] == "waited"
    assert result["state"] == "open"
    events = result["events"]
    assert events[:2] == ["open", "close 4000"]
    assert events[-1] == "open"
    attempts = events[2:-1]
    assert attempts == [f"reconnect {n}" for n in range(1, len(attempts) + 1)]


def test_backoff_uses_full_jitter_in_the_browser(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        """
const exp = new Backoff({ baseDelay: 100, maxDelay: 1000, maxRetries: 6, random: () => 1 });
const ceilings = [];
for (let d = exp.next(); d !== null; d = exp.next()) ceilings.push(d);
const lin = new Backoff({ baseDelay: 100, maxDelay: 250, backoff: "linear", random: () => 1 });
const linear = [lin.next(), lin.next(), lin.next()];
const draws = [];
for (let i = 0; i < 300; i++) { const b = new Backoff({ baseDelay: 800 }); draws.push(b.next()); }
return { ceilings, linear, min: Math.min(...draws), max: Math.max(...draws) };
""",
    )
    assert result["ceilings"] == [100, 200, 400, 800, 1000, 1000]
    assert result["linear"] == [100, 200, 250]
    assert 0 <= result["min"] < 80
    assert 720 < result["max"] <= 800


REFUSALS_JS = """
const REFUSALS = { bad: [1008, "Unauthorized"], boom: [1011, "Internal Error"] };
const bounded = (promise, ms) =>
  Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve("timed out"), ms))]);
const refusalOf = async (promise) => {
  try { await promise; return "resolved"; }
  catch (err) {
    const { name, code, message, closeCode, reason } = err;
    return [name, err instanceof WsClientError, code, message, closeCode, reason];
  }
};
"""


@pytest.mark.parametrize("reconnect", [False, True], ids=["plain", "reconnect"])
def test_refused_connections_report_open_close_and_reject_ready(
    driver: WebDriver, reference_server: ServerThread, reconnect: bool
) -> None:
    driver.get(reference_server.url())
    with RefusingServer() as raw:
        # The reference app refuses in on_connect; the bare server in the handshake's write.
        targets = {
            "/ws?token=bad": 1008,
            "/ws?token=boom": 1011,
            raw.url("/1008"): 1008,
            raw.url("/1011"): 1011,
        }
        result = run_js(
            driver,
            REFUSALS_JS
            + f"const reconnect = {'true' if reconnect else 'false'};"
            + f"const targets = {json.dumps(list(targets))};"
            + """
const runs = [];
for (const target of targets) {
  for (let i = 0; i < 20; i++) {
    const events = [];
    let closed;
    const closing = new Promise((resolve) => (closed = resolve));
    const client = new WsClient(target, {
      reconnect, baseDelay: 10, maxDelay: 20,
      onOpen: () => events.push(["open"]),
      onClose: (code, reason) => { events.push(["close", code, reason]); closed(); },
      onReconnect: (n) => events.push(["reconnect", n]),
    });
    const ready = await bounded(refusalOf(client.ready()), 5000);
    const waited = await bounded(refusalOf(client.call("rpc", "/echo", 1)), 5000);
    if (await bounded(closing, 5000) === "timed out") events.push(["no close"]);
    runs.push({ target, ready, waited, events, state: client.state });
    client.close();
  }
}
return runs;
""",
        )
    assert len(result) == 80
    for run in result:
        code = targets[run["target"]]
        reason = {1008: "Unauthorized", 1011: "Internal Error"}[code]
        refusal = ["WsConnectionRefused", True, code, reason, code, reason]
        assert run == {
            "target": run["target"],
            "ready": refusal,
            "waited": refusal,
            "events": [["open"], ["close", code, reason]],
            "state": "disconnected",
        }


def test_refused_reconnects_are_reported_and_end_after_max_retries(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        REFUSALS_JS
        + """
const events = [];
let gaveUp;
const givingUp = new Promise((resolve) => (gaveUp = resolve));
const client = new WsClient("/ws", {
  reconnect: true, baseDelay: 10, maxDelay: 20, maxRetries: 3,
  onOpen: () => events.push(["open"]),
  onClose: (code, reason) => events.push(["close", code, reason]),
  onReconnect: (n) => {
    events.push(["reconnect", n]);
    if (!client.url.endsWith("?token=bad")) client.url += "?token=bad";
  },
  onError: (err) => {
    if (err instanceof WsClientError) { events.push(["error", err.code, err.message]); gaveUp(); }
  },
});
await client.ready();
// A subscription to replay: the refusal comes while the replay waits for its reply.
await client.subscribe("/chat/rooms/refused");
client.call("rpc", "/kick").catch(() => {});
const outcome = await bounded(givingUp, 10000);
return { events, outcome: outcome ?? "gave up", state: client.state,
         ready: await bounded(refusalOf(client.ready()), 5000) };
""",
    )
    refused = [["open"], ["close", 1008, "Unauthorized"]]
    assert result == {
        "events": [
            ["open"],
            ["close", 4000, "kicked"],
            ["reconnect", 1],
            *refused,
            ["reconnect", 2],
            *refused,
            ["reconnect", 3],
            *refused,
            ["error", 503, "Reconnect failed"],
        ],
        "outcome": "gave up",
        "state": "disconnected",
        "ready": ["WsConnectionRefused", True, 1008, "Unauthorized", 1008, "Unauthorized"],
    }


# -- presence ----------------------------------------------------------------------------------


def presence_web_app() -> web.Application:
    """A fresh instance with the reference app's presence routes (one per server start)."""
    ws = WsApp(heartbeat=0)
    reference_app.add_presence(ws)
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=TEST_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    add_client_route(app)
    ws.attach(app, "/ws")
    return app


PRESENCE_JS = """
const until = (presence, test) => new Promise((resolve) => {
  if (test()) { resolve(); return; }
  const off = presence.onChange(() => { if (test()) { off(); resolve(); } });
});
const users = (presence) => [...presence.members.keys()].sort();
"""


def follow_lobby(driver: WebDriver, user: str, name: str) -> Any:
    """In the current page: ``user`` follows the lobby (kept as window.lobby); its view."""
    return run_js(
        driver,
        PRESENCE_JS
        + f"""
const options = {{ reconnect: true, baseDelay: 10, maxDelay: 100 }};
window.client = new WsClient("/ws?user={user}", options);
window.changes = [];
window.lobby = await client.presence("/presence/rooms/lobby", {{ name: "{name}" }});
// The push of one's own join may come after the first list: only others' changes count.
lobby.onChange((change) => {{
  if (![...change.joins, ...change.leaves].every((m) => m.user === "{user}")) changes.push(change);
}});
return {{ members: [...lobby.members.values()], again: (await client.presence(
  "/presence/rooms/lobby")) === lobby }};
""",
    )


def test_presence_two_pages_see_joins_leaves_counts_and_lists(driver: WebDriver) -> None:
    with ServerThread(presence_web_app) as server:
        ada = driver.current_window_handle
        driver.get(server.url())
        first = follow_lobby(driver, "ada", "Ada")
        assert first == {
            "members": [{"user": "ada", "name": "Ada", "connections": 1}],
            "again": True,  # one RoomPresence per room
        }

        driver.switch_to.new_window("tab")
        bob = driver.current_window_handle
        driver.get(server.url())
        second = follow_lobby(driver, "bob", "Bob")
        assert [m["user"] for m in second["members"]] == ["ada", "bob"]
        queries = run_js(
            driver,
            """
return { count: await lobby.count(), page: await lobby.list(1, 1) };
""",
        )
        assert queries == {
            "count": {"connections": 2, "users": 2},
            "page": {"total": 2, "members": [{"user": "bob", "name": "Bob", "connections": 1}]},
        }

        driver.switch_to.window(ada)
        seen = run_js(
            driver,
            PRESENCE_JS
            + """
await until(lobby, () => lobby.members.has("bob"));
return { users: users(lobby), changes };
""",
        )
        assert seen == {
            "users": ["ada", "bob"],
            "changes": [{"joins": [{"user": "bob", "name": "Bob"}], "leaves": []}],
        }

        driver.switch_to.window(bob)
        left = run_js(
            driver,
            """
await lobby.leave();
return { members: lobby.members.size, joined: lobby.joined,
         count: await client.call("rpc", "/presence/count", { room: "/presence/rooms/lobby" }) };
""",
        )
        assert left == {"members": 0, "joined": False, "count": {"connections": 1, "users": 1}}

        driver.switch_to.window(ada)
        seen = run_js(
            driver,
            PRESENCE_JS
            + """
await until(lobby, () => !lobby.members.has("bob"));
return { users: users(lobby), last: changes[changes.length - 1] };
""",
        )
        assert seen == {"users": ["ada"], "last": {"joins": [], "leaves": [{"user": "bob"}]}}

        # Bob follows the room again, then his page goes away: Ada sees him leave.
        driver.switch_to.window(bob)
        again = follow_lobby(driver, "bob", "Bob")
        assert [m["user"] for m in again["members"]] == ["ada", "bob"]
        driver.switch_to.window(ada)
        run_js(driver, PRESENCE_JS + "await until(lobby, () => changes.length === 3);")
        driver.switch_to.window(bob)
        driver.close()
        driver.switch_to.window(ada)
        seen = run_js(
            driver,
            PRESENCE_JS
            + """
await until(lobby, () => changes.length === 4 && !lobby.members.has("bob"));
const out = { users: users(lobby), changes: changes.slice(2) };
client.close();
return out;
""",
        )
        assert seen == {
            "users": ["ada"],
            "changes": [
                {"joins": [{"user": "bob", "name": "Bob"}], "leaves": []},
                {"joins": [], "leaves": [{"user": "bob"}]},
            ],
        }


def test_presence_resynchronises_after_a_server_restart(driver: WebDriver) -> None:
    with ServerThread(presence_web_app) as server:
        port = server.port
        ada = driver.current_window_handle
        driver.get(server.url())
        follow_lobby(driver, "ada", "Ada")
        driver.switch_to.new_window("tab")
        bob = driver.current_window_handle
        driver.get(server.url())
        follow_lobby(driver, "bob", "Bob")
        driver.switch_to.window(ada)
        run_js(driver, PRESENCE_JS + 'await until(lobby, () => lobby.members.has("bob"));')
    # Both pages lost the server and retry; Bob's page goes away before it comes back.
    driver.switch_to.window(bob)
    driver.close()
    driver.switch_to.window(ada)
    with ServerThread(presence_web_app, port=port) as server:
        driver.switch_to.new_window("tab")
        cy = driver.current_window_handle
        driver.get(server.url())
        follow_lobby(driver, "cy", "Cy")
        driver.switch_to.window(ada)
        # Ada joins again and takes the new server's list: Bob is gone, Cy is there.
        seen = run_js(
            driver,
            PRESENCE_JS
            + """
await until(lobby, () => users(lobby).join() === "ada,cy");
return { users: users(lobby), count: await lobby.count(), state: client.state,
         bobLeft: changes.some((c) => c.leaves.some((l) => l.user === "bob")) };
""",
        )
        assert seen == {
            "users": ["ada", "cy"],
            "count": {"connections": 2, "users": 2},
            "state": "open",
            "bobLeft": True,
        }
        driver.switch_to.window(cy)
        cy_view = run_js(
            driver,
            PRESENCE_JS
            + """
await until(lobby, () => users(lobby).join() === "ada,cy");
client.close();
return users(lobby);
""",
        )
        assert cy_view == ["ada", "cy"]
        driver.close()
        driver.switch_to.window(ada)
        run_js(driver, "client.close();")


# -- the chat example ---------------------------------------------------------------------------


def wait_text(driver: WebDriver, element_id: str, text: str, timeout: float = 10) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: text in d.find_element(By.ID, element_id).text,
        message=f"{text!r} never appeared in #{element_id}",
    )


def join_chat(driver: WebDriver, url: str, name: str, room: str) -> None:
    driver.get(url)
    driver.find_element(By.ID, "name").send_keys(name)
    room_input = driver.find_element(By.ID, "room")
    room_input.clear()
    room_input.send_keys(room)
    driver.find_element(By.ID, "join").click()
    wait_text(driver, "log", f"you joined as {name}")


def say(driver: WebDriver, text: str) -> None:
    driver.find_element(By.ID, "text").send_keys(text)
    driver.find_element(By.ID, "send").click()


def test_chat_two_tabs_talk_and_see_the_leave_notice(driver: WebDriver, tmp_path: Path) -> None:
    with ServerThread(lambda: create_chat_app(history_size=20)) as server:
        first = driver.current_window_handle
        join_chat(driver, server.url(), "Ada", "lobby")

        driver.switch_to.new_window("tab")
        second = driver.current_window_handle
        join_chat(driver, server.url(), "Bob", "lobby")
        wait_text(driver, "members", "2 here: Ada, Bob")
        say(driver, "hello from Bob")
        wait_text(driver, "log", "Bobhello from Bob")

        driver.switch_to.window(first)
        wait_text(driver, "log", "Bob joined")
        wait_text(driver, "log", "Bobhello from Bob")
        wait_text(driver, "members", "2 here: Ada, Bob")
        say(driver, "hi Bob, welcome!")
        wait_text(driver, "log", "Adahi Bob, welcome!")
        wait_text(driver, "status", "online")

        shot = tmp_path / "chat.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if UPDATE_DOCS_IMG:
            DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_IMG)

        say(driver, "<b>not bold</b>")
        wait_text(driver, "log", "Ada<b>not bold</b>")  # names and texts are text, never HTML
        assert driver.find_elements(By.CSS_SELECTOR, "#log b") == []

        driver.switch_to.window(second)
        wait_text(driver, "log", "Adahi Bob")
        driver.close()  # Bob's tab goes away, and its socket with it
        driver.switch_to.window(first)
        wait_text(driver, "log", "Bob left")
        wait_text(driver, "members", "1 here: Ada")

        # A newcomer gets the room's recent history.
        driver.switch_to.new_window("tab")
        join_chat(driver, server.url(), "Cy", "lobby")
        log_text = driver.find_element(By.ID, "log").text
        assert log_text.index("Bobhello from Bob") < log_text.index("Adahi Bob, welcome!")
        driver.close()
        driver.switch_to.window(first)


def members_of(driver: WebDriver) -> str:
    text: str = driver.find_element(By.ID, "members").text
    return text


def test_chat_members_have_no_duplicates_after_a_server_restart(driver: WebDriver) -> None:
    with ServerThread(create_chat_app) as server:
        port = server.port
        ada = driver.current_window_handle
        join_chat(driver, server.url(), "Ada", "lobby")
        driver.switch_to.new_window("tab")
        bob = driver.current_window_handle
        join_chat(driver, server.url(), "Bob", "lobby")
        wait_text(driver, "members", "2 here: Ada, Bob")
    # Both tabs lost the server (1001) and retry; a new one comes up on the same port.
    with ServerThread(create_chat_app, port=port) as server:
        driver.switch_to.new_window("tab")
        cy = driver.current_window_handle
        join_chat(driver, server.url(), "Cy", "lobby")
        for tab in (ada, bob, cy):
            driver.switch_to.window(tab)
            # Each tab settles on the server's list: every member once.
            WebDriverWait(driver, 20).until(
                lambda d: members_of(d) == "3 here: Ada, Bob, Cy",
                message="the member list never settled on Ada, Bob, Cy",
            )
        driver.switch_to.window(cy)
        say(driver, "all here")
        for tab in (ada, bob):
            driver.switch_to.window(tab)
            wait_text(driver, "log", "Cyall here")
            assert members_of(driver) == "3 here: Ada, Bob, Cy"
            wait_text(driver, "status", "online")
        for tab in (bob, cy):
            driver.switch_to.window(tab)
            driver.close()
        driver.switch_to.window(ada)


def test_chat_wraps_a_long_word_instead_of_overflowing(driver: WebDriver) -> None:
    with ServerThread(create_chat_app) as server:
        join_chat(driver, server.url(), "Ada", "lobby")
        word = "x" * 400
        say(driver, word)
        wait_text(driver, "log", word)
        sizes = driver.execute_script(
            """
const log = document.getElementById("log");
const line = log.lastElementChild;
return { line: [line.scrollWidth, line.clientWidth], log: [log.scrollWidth, log.clientWidth],
         height: line.getBoundingClientRect().height };
"""
        )
        line_scroll, line_client = sizes["line"]
        log_scroll, log_client = sizes["log"]
        assert line_scroll <= line_client, sizes
        assert log_scroll <= log_client, sizes
        assert sizes["height"] > 40, sizes  # wrapped over several lines


# -- access and flow control ----------------------------------------------------------------


def auth_web_app() -> web.Application:
    """The page, the client module and a fresh copy of the reference auth app."""
    import importlib.util

    path = Path(__file__).parent.parent / "examples" / "reference_auth_app.py"
    spec = importlib.util.spec_from_file_location("reference_auth_app_browser", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=TEST_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    add_client_route(app)
    module.app.attach(app, "/ws")
    return app


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ServerThread]:
    with ServerThread(auth_web_app) as server:
        yield server


def test_rate_limit_errors_carry_retry_after(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    driver.get(reference_server.url())
    result = run_js(
        driver,
        """
const client = new WsClient("/ws");
const outcomes = await Promise.allSettled(
  Array.from({ length: 8 }, (_, i) => client.call("rpc", "/limited/echo", i)));
client.close();
const errors = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason);
return {
  first: outcomes.slice(0, 5).map((o) => o.value),
  errors: errors.map((e) => [e instanceof WsClientError, e.code, e.message,
                             typeof e.retryAfter, e.retryAfter > 0 && e.retryAfter <= 0.201]),
};
""",
    )
    assert result["first"] == [0, 1, 2, 3, 4]
    assert len(result["errors"]) >= 1
    assert all(e == [True, 429, "Too Many Requests", "number", True] for e in result["errors"])


def test_token_login_refresh_and_no_reconnect_after_final_closes(
    driver: WebDriver, auth_server: ServerThread
) -> None:
    driver.get(auth_server.url())
    result = run_js(
        driver,
        """
const out = {};
// A 2 s token refreshed halfway (refreshBefore 1500 ms): it outlives the witness below.
const alice = new WsClient("/ws", { token: async () => "short:alice", refreshBefore: 1500,
                                    reconnect: true });
await alice.ready(5000);
out.alice = await alice.call("rpc", "/whoami");
// The witness logs in by hand with the same 2 s lifetime and never refreshes.
const witnessClosed = new Promise((resolve) => {
  const witness = new WsClient("/ws", { reconnect: true,
    onClose: (code, reason) => resolve([code, reason, witness.state, witness.lastClose]) });
  witness.ready(5000).then(() => witness.call("rpc", "/auth/login", { token: "short:bob" }));
});
out.witness = await witnessClosed;
out.aliceAfter = (await alice.call("rpc", "/whoami")).user;
out.aliceState = alice.state;
alice.close();
// Never logs in: 4408, and no reconnect although reconnect is on.
out.idle = await new Promise((resolve) => {
  const idle = new WsClient("/ws", { reconnect: true, baseDelay: 0,
    onClose: (code, reason) => setTimeout(() => resolve([code, reason, idle.state]), 0) });
});
// A refused login: ready() rejects with the server's error, no retry.
const mallory = new WsClient("/ws", { token: () => "mallory", reconnect: true });
try { await mallory.ready(5000); out.mallory = "resolved"; }
catch (err) { out.mallory = [err instanceof WsClientError, err.code, err.message, mallory.state]; }
mallory.close();
return out;
""",
    )
    assert result["alice"]["user"] == "alice"
    assert result["witness"] == [
        4401,
        "Token expired",
        "disconnected",
        {"code": 4401, "reason": "Token expired"},
    ]
    assert result["aliceAfter"] == "alice"
    assert result["aliceState"] == "open"
    assert result["idle"] == [4408, "Authentication timeout", "disconnected"]
    assert result["mallory"] == [True, 401, "Unauthorized", "disconnected"]


# -- recovery: history rooms and sessions across connections cut by a TCP relay ---------------


class ProxyThread:
    """A [`TcpProxy`][] in front of ``upstream``, run from its own loop in a thread.

    The page is loaded through it too, so that its origin is the proxy's (the server
    checks the WebSocket's Origin against its Host).
    """

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._proxy: TcpProxy | None = None

    def url(self, path: str = "/") -> str:
        assert self._proxy is not None
        return f"http://127.0.0.1:{self._proxy.port}{path}"

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the proxy did not stop"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with TcpProxy(self._upstream) as proxy:
            self._proxy = proxy
            self._ready.set()
            await self._stop.wait()

    def _run(self, action: Callable[[TcpProxy], Any]) -> Any:
        assert self._loop is not None and self._proxy is not None
        proxy = self._proxy

        async def run() -> Any:
            return action(proxy)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def cut(self) -> int:
        """Reset every relayed connection (no close frame) and refuse new ones."""

        def cut(proxy: TcpProxy) -> int:
            proxy.refuse = True
            return proxy.drop()

        return int(self._run(cut))

    def restore(self) -> None:
        self._run(lambda proxy: setattr(proxy, "refuse", False))

    def stall(self) -> None:
        """Hold back what the server sends (a reply lost on the way) until the cut."""
        self._run(lambda proxy: proxy.stall())


def wait_js(driver: WebDriver, condition: str) -> None:
    """Wait (in the page, up to 20 s) until the JS expression ``condition`` holds."""
    run_js(
        driver,
        f"const end = Date.now() + 20000;\n"
        f"while (!({condition})) {{\n"
        f"  if (Date.now() > end) throw new Error({json.dumps('not in time: ' + condition)});\n"
        f"  await new Promise((resolve) => setTimeout(resolve, 10));\n"
        f"}}",
    )


def publish_feed(port: int, room: str, texts: list[str]) -> list[int]:
    """Publish ``texts`` to history room ``room`` from Python, straight to the server."""

    async def publish() -> list[int]:
        async with WsClient(f"ws://127.0.0.1:{port}/ws") as bob:
            return [(await bob.call("publish", room, text))["offset"] for text in texts]

    return asyncio.run(publish())


RECOVERING_CLIENT_JS = """
const failed = [];
const got = [];
const client = new WsClient(URL, { reconnect: true, baseDelay: 10, maxDelay: 50, OPTIONS
  onRecoveryFailed: (path) => failed.push(path) });
client.on("message", "*", (p) => got.push([p.offset, p.data]));
window.t = Object.assign(window.t || {}, { NAME: { client, got, failed } });
"""


def recovering_client(name: str, url: str, options: str = "") -> str:
    return (
        RECOVERING_CLIENT_JS.replace("NAME", name)
        .replace("URL", json.dumps(url))
        .replace("OPTIONS", options)
    )


def test_history_room_recovered_in_the_browser_after_a_cut(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    room = f"/feed/rooms/browser-{os.getpid()}-{id(driver)}"
    with ProxyThread(reference_server.port) as proxy:
        driver.get(proxy.url())
        start = run_js(
            driver,
            recovering_client("alice", "/ws")
            + f"return (await t.alice.client.subscribe({json.dumps(room)})).reply;",
        )
        sent = publish_feed(reference_server.port, room, ["m1", "m2"])
        wait_js(driver, "t.alice.got.length === 2")
        assert proxy.cut() >= 1
        wait_js(driver, 't.alice.client.state === "connecting"')
        sent += publish_feed(reference_server.port, room, ["m3", "m4", "m5"])
        proxy.restore()
        wait_js(driver, 't.alice.client.state === "open" && t.alice.got.length === 5')
        sent += publish_feed(reference_server.port, room, ["m6"])
        wait_js(driver, "t.alice.got.length === 6")
        result = run_js(
            driver,
            """
await new Promise((resolve) => setTimeout(resolve, 50)); // a duplicate would come now
const out = { got: t.alice.got, failed: t.alice.failed,
              positions: Object.fromEntries(t.alice.client.positions) };
t.alice.client.close();
return out;
""",
        )
    assert result["got"] == [[offset, f"m{i}"] for i, offset in enumerate(sent, 1)]
    assert result["failed"] == []
    assert result["positions"] == {room: {"offset": sent[-1], "epoch": start["epoch"]}}


def recovery_web_app(sessions: SessionServer) -> web.Application:
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=TEST_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    add_client_route(app)
    sessions.app.attach(app, "/ws")
    repeating_app().attach(app, "/dup")
    return app


def test_repeats_dropped_and_lost_history_reported_in_the_browser(driver: WebDriver) -> None:
    sessions = SessionServer()
    with (
        ServerThread(lambda: recovery_web_app(sessions)) as server,
        ProxyThread(server.port) as proxy,
    ):
        driver.get(proxy.url())
        run_js(
            driver,
            recovering_client("dup", "/dup")
            + """
await t.dup.client.subscribe("/dup/a");
await t.dup.client.call("rpc", "/dup/push", { path: "/dup/a", offsets: [4, 5] });
""",
        )
        wait_js(driver, "t.dup.got.length === 2")
        proxy.cut()
        wait_js(driver, 't.dup.client.state === "connecting"')
        proxy.restore()  # the replay: 4, 5, 7, 6, 7, 5
        wait_js(driver, 't.dup.client.state === "open"')
        run_js(
            driver, 'await t.dup.client.call("rpc", "/dup/push", { path: "/dup/a", offsets: [8] });'
        )
        wait_js(driver, "t.dup.got.length >= 5")
        run_js(driver, 'await t.dup.client.call("rpc", "/dup/epoch");')
        proxy.cut()
        wait_js(driver, 't.dup.client.state === "connecting"')
        proxy.restore()  # another epoch: 2, 1, 2 and "recovered": false
        wait_js(driver, 't.dup.client.state === "open" && t.dup.failed.length === 1')
        result = run_js(
            driver,
            """
await new Promise((resolve) => setTimeout(resolve, 50));
const out = { got: t.dup.got, failed: t.dup.failed,
              positions: Object.fromEntries(t.dup.client.positions) };
t.dup.client.close();
return out;
""",
        )
    assert result["got"] == [
        [4, "m4"],
        [5, "m5"],
        [6, "m6"],
        [7, "m7"],
        [8, "m8"],
        [1, "m1"],
        [2, "m2"],
    ]
    assert result["failed"] == ["/dup/a"]
    assert result["positions"] == {"/dup/a": {"offset": 2, "epoch": "e2"}}


def test_resume_and_a_call_cut_off_in_flight_in_the_browser(driver: WebDriver) -> None:
    sessions = SessionServer()
    with (
        ServerThread(lambda: recovery_web_app(sessions)) as server,
        ProxyThread(server.port) as proxy,
    ):
        driver.get(proxy.url())
        first = run_js(
            driver,
            recovering_client("alice", "/ws?name=ada", "resume: true,")
            + """
const c = t.alice.client;
await c.ready(5000);
const me = await c.call("rpc", "/whoami");
t.alice.pending = c.call("rpc", "/counter/incr", { delay: 0.3 });
const errorOf = async (p) => {
  try { await p; return null; } catch (e) { return [e.name, e.message]; }
};
return { session: c.sessionToken, resumed: c.resumed, me,
         bad: [await errorOf(c.call("rpc", "/counter/incr", null, { idem: "" })),
               await errorOf(c.call("rpc", "/counter/incr", null, { idem: "x".repeat(65) }))] };
""",
        )
        for _ in range(200):
            if sessions.runs:
                break
            threading.Event().wait(0.01)
        assert sessions.runs == 1
        proxy.cut()
        wait_js(driver, 't.alice.client.state === "connecting"')
        proxy.restore()
        result = run_js(
            driver,
            """
const c = t.alice.client;
const value = await t.alice.pending;
const out = { value, session: c.sessionToken, resumed: c.resumed,
              me: await c.call("rpc", "/whoami"),
              next: await c.call("rpc", "/counter/incr", null, { idem: "order-7" }),
              again: await c.call("rpc", "/counter/incr", null, { idem: "order-7" }) };
c.close();
out.afterClose = c.sessionToken;
return out;
""",
        )
    assert isinstance(first["session"], str) and first["resumed"] is False
    assert first["bad"] == [["RangeError", "idem must be a string of 1 to 64 characters"]] * 2
    assert result["value"] == {"value": 1}
    assert sessions.runs == 2  # the cut-off call ran once; the "order-7" pair once
    assert result["next"] == result["again"] == {"value": 2}
    assert result["session"] == first["session"] and result["resumed"] is True
    assert result["me"] == first["me"]
    assert result["afterClose"] is None
    auto = sessions.idems[0]
    # The repeat of "order-7" may be answered before the handler (a server keeping replies).
    assert sessions.idems[:3] == [auto, auto, "order-7"] and len(auto) == 32
    assert set(sessions.idems) == {auto, "order-7"}
    assert sessions.handshakes[0] == {"name": "ada"}
    assert sessions.handshakes[-1] == {"name": "ada", "session": first["session"]}


def test_resume_on_the_reference_app_keeps_the_id_and_runs_a_cut_off_call_once(
    driver: WebDriver, reference_server: ServerThread
) -> None:
    key = f"browser-{os.getpid()}-{id(driver)}"
    store = reference_app.app.sessions.store

    def counted() -> Any:
        assert reference_server._loop is not None
        return asyncio.run_coroutine_threadsafe(
            store.get("counter:" + key), reference_server._loop
        ).result(10)

    with ProxyThread(reference_server.port) as proxy:
        driver.get(proxy.url())
        first = run_js(
            driver,
            recovering_client("alice", "/ws", "resume: true,")
            + """
const c = t.alice.client;
await c.subscribe("/chat/rooms/browser-resume");
return { session: c.sessionToken, resumed: c.resumed, me: await c.call("rpc", "/whoami") };
""",
        )
        proxy.stall()
        run_js(
            driver,
            f"t.alice.pending = t.alice.client.call('rpc', '/counter/incr', {{ key: '{key}' }});",
        )
        for _ in range(500):
            if counted() == "1":
                break
            threading.Event().wait(0.01)
        assert counted() == "1"  # the server ran it; its reply is lost on the way
        proxy.cut()
        wait_js(driver, 't.alice.client.state === "connecting"')
        proxy.restore()
        result = run_js(
            driver,
            f"""
const c = t.alice.client;
const out = {{ value: await t.alice.pending, resumed: c.resumed, session: c.sessionToken,
              me: await c.call("rpc", "/whoami"), rooms: await c.call("rpc", "/rooms"),
              next: await c.call("rpc", "/counter/incr", {{ key: "{key}" }}) }};
c.close();
return out;
""",
        )
    assert isinstance(first["session"], str) and first["resumed"] is False
    assert result["value"] == {"value": 1}
    assert result["next"] == {"value": 2}
    assert result["resumed"] is True and result["session"] == first["session"]
    assert result["me"] == first["me"]
    assert "/chat/rooms/browser-resume" in result["rooms"]
