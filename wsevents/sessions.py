"""Sessions: a connection that ended without a clean close can be resumed, on any instance,
and calls carrying ``idem`` run once.

A session starts when the client calls the session route (``rpc /session`` by default,
registered by [`Sessions.enable`][]): the reply holds a random token. While the connection
is open, the store holds ``session-live:<token>`` (its connection id). When the connection
ends **without a clean close** (no close frame: the network dropped, the heartbeat timed
out) or because the server shuts down (1001), a snapshot (id, user, authentication,
rooms, ``state``) is kept for ``ttl`` seconds under ``session:<token>``. A connection
opened with ``?session=<token>`` claims it (get and delete at once: one claimant wins) and
takes the old connection's place. When the old connection still looks open (the server
has not noticed the drop yet), it is dropped first, through the cluster's control channel
when it lives on another instance, and its snapshot is waited for.

Idempotent calls: a frame with ``"idem"`` (1 to 64 characters) and an ``id`` runs once per
connection id and ``idem``; its reply (data or error, except 429) is kept in the store for
``idem_ttl`` seconds and sent again, with the repeat's ``id``, to a repeat (also after a
resume on another instance).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._context import message_var
from .exceptions import WsError
from .protocol import JsonCodec
from .transports.base import SessionStore
from .transports.memory import MemorySessionStore

if TYPE_CHECKING:
    from .app import WsApp
    from .connection import Connection

__all__ = [
    "DEFAULT_SESSION_PATH",
    "DEFAULT_SESSION_TTL",
    "IDEM_TTL",
    "Claim",
    "Sessions",
    "is_idem",
]

log = logging.getLogger("wsevents.sessions")

DEFAULT_SESSION_TTL = 60.0
DEFAULT_SESSION_PATH = "/session"
IDEM_TTL = 120.0
"""Seconds the reply of an idempotent call is kept."""
IDEM_WAIT = 10.0
"""Seconds a repeated call waits for the first one, still running, before 409."""
RESUME_WAIT = 3.0
"""Seconds a resume waits for the snapshot of a connection that is still closing."""
HOLD = 5.0
"""Seconds a resumed member's live pushes in a history room wait for its resubscribe."""
LIVE_TTL = 86400.0
"""Seconds the live marker of an open session is kept (a crashed instance never deletes it)."""
CALL_IN_PROGRESS = "Call in progress"
SERVICE_UNAVAILABLE = "Service unavailable"
INVALID_IDEM = "Invalid idem: a string of 1 to 64 characters"

_PENDING = "\x00pending"
_POLL = 0.05
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
_dumps = JsonCodec.encode
_loads = JsonCodec.decode


def is_idem(value: Any) -> bool:
    """Whether ``value`` is a valid ``idem``: a string of 1 to 64 characters."""
    return type(value) is str and 0 < len(value) <= 64


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed session: its token, its snapshot (JSON) and the rooms to re-join with
    their presence member data."""

    token: str
    snapshot: str
    rooms: list[tuple[str, Any]]


class Sessions:
    """Sessions and idempotent calls of one app (``ws.sessions``).

    Sessions are off until [`enable`][]; idempotent calls always work.

    Attributes:
        ttl: seconds a session that ended without a clean close stays resumable.
        path: the path of the session route (``rpc``).
        idem_ttl: seconds the reply of an idempotent call is kept.
        idem_wait: seconds a repeat waits for the first call while it still runs; then
            409 ``"Call in progress"``.
        resume_wait: seconds a resume waits for the old connection's snapshot when it is
            still open or closing.
        hold: seconds a resumed connection's live pushes in a history room wait for its
            client to subscribe again with ``since`` (the missed pushes then come first,
            in offset order); after that they are sent as they are.
    """

    def __init__(self, app: WsApp) -> None:
        self._app = app
        self._store: SessionStore | None = None
        self.enabled = False
        self.ttl = DEFAULT_SESSION_TTL
        self.path = DEFAULT_SESSION_PATH
        self.idem_ttl = IDEM_TTL
        self.idem_wait = IDEM_WAIT
        self.resume_wait = RESUME_WAIT
        self.hold = HOLD
        self._calls: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    def enable(
        self,
        *,
        ttl: float = DEFAULT_SESSION_TTL,
        path: str = DEFAULT_SESSION_PATH,
        idem_ttl: float = IDEM_TTL,
    ) -> None:
        """Turn sessions on and register the session route ``rpc path``, which replies
        ``{"session": <token>, "resumed": <bool>}``.

        On an app with ``auth_required=True`` the route is not public: a client gets its
        token once authenticated.

        Raises:
            ValueError: ``ttl`` or ``idem_ttl`` is not positive.
            RuntimeError: sessions are already enabled.
            RoutingError: ``path`` is not a valid route pattern, or is taken.
        """
        if ttl <= 0 or idem_ttl <= 0:
            raise ValueError("ttl and idem_ttl must be > 0")
        if self.enabled:
            raise RuntimeError("sessions are already enabled")
        self._app.add_message_handler("rpc", path, self._session_route)
        self.enabled = True
        self.ttl = float(ttl)
        self.path = path
        self.idem_ttl = float(idem_ttl)

    @property
    def store(self) -> SessionStore:
        """The backend store (the transport's, or one of this process)."""
        if self._store is None:
            store = self._app.rooms.cluster.capabilities.sessions
            self._store = store if store is not None else MemorySessionStore()
        return self._store

    async def _session_route(self) -> dict[str, Any]:
        """This connection's session token, and whether it resumed a previous connection."""
        conn = message_var.get().connection
        return {"session": await self.token(conn), "resumed": conn.resumed}

    async def token(self, conn: Connection) -> str:
        """``conn``'s session token, made on first use (urlsafe, 192 random bits).

        Raises:
            WsError: 503 when the store cannot record it.
        """
        token = conn.session
        if token is None:
            # Set before the write: two calls at once get one token.
            token = conn.session = secrets.token_urlsafe(24)
            try:
                await self.store.put("session-live:" + token, conn.id, LIVE_TTL)
            except Exception as exc:
                conn.session = None
                log.warning("session store write failed: %r", exc)
                raise WsError(503, SERVICE_UNAVAILABLE) from None
        return token

    # -- ending and resuming (called by the app) -------------------------------------------

    def snapshot(self, conn: Connection) -> str | None:
        """What a resume restores of ``conn`` (JSON), or None when it has no session."""
        if conn.session is None:
            return None
        fields: dict[str, Any] = {
            "id": conn.id,
            "user": conn.user,
            "auth": conn.authenticated,
            # Each room with the presence member data it was joined with (or null).
            "rooms": [[room, self._app.presence.data_of(conn, room)] for room in conn.rooms],
        }
        if conn.expires_at is not None:
            fields["expires"] = time.time() + (conn.expires_in or 0.0)
        try:
            fields["state"] = conn.state
            return bytes(_dumps(fields)).decode()
        except Exception:
            log.warning("session of %s: its state is not JSON, it is not kept", conn.id)
            fields["state"] = {}
            return bytes(_dumps(fields)).decode()

    async def ended(self, conn: Connection, snapshot: str | None, resumable: bool) -> None:
        """``conn`` is gone (its rooms left): keep ``snapshot`` when ``resumable``, and drop
        the live marker. Store failures are logged (the session is then lost)."""
        token = conn.session
        if token is None or not self.enabled:
            return
        try:
            if resumable and snapshot is not None:
                await self.store.put("session:" + token, snapshot, self.ttl)
            await self.store.delete("session-live:" + token)
        except Exception as exc:
            log.warning("session of %s not kept: %r", conn.id, exc)

    async def claim(self, conn: Connection) -> Claim | None:
        """Resume the session named by ``?session=`` of ``conn``'s request: take the
        snapshot and give ``conn`` its id, user, authentication and state. Returns what
        was claimed (the rooms to re-join, with their presence member data), or None (a
        new session: no token, an unknown, used, clean or expired one, or a store
        failure)."""
        request = conn.request
        token = request.query.get("session") if request is not None else None
        if token is None or not _TOKEN.fullmatch(token):
            return None
        try:
            raw = await self._take_snapshot(token)
        except Exception as exc:
            log.warning("session resume failed, a new session starts: %r", exc)
            return None
        if raw is None:
            return None
        fields = _load_snapshot(raw)
        if fields is None:
            return None
        expires = fields.get("expires")
        left = expires - time.time() if expires is not None else None
        if left is not None and left <= 0:
            return None  # the session expired meanwhile (its deadline would close it)
        conn.id = fields["id"]
        conn.user = fields["user"]
        conn._authenticated = fields["auth"]
        conn.state = fields["state"]
        conn.session = token
        conn.resumed = True
        if left is not None:  # after the id: the deadline is kept by connection id
            conn.expires_at = time.monotonic() + left
            if conn._on_expiry is not None:
                conn._on_expiry(conn, conn.expires_at)
        return Claim(token, raw, [(room, data) for room, data in fields["rooms"]])

    async def give_back(self, conn: Connection, claim: Claim) -> None:
        """``conn`` claimed a session but was refused (or left) before it opened: keep the
        snapshot again, for ``ttl`` seconds."""
        log.debug("session of %s given back: its resume did not open", conn.id)
        try:
            await self.store.put("session:" + claim.token, claim.snapshot, self.ttl)
        except Exception as exc:
            log.warning("session of %s lost: %r", conn.id, exc)

    async def _take_snapshot(self, token: str) -> str | None:
        store = self.store
        key, live_key = "session:" + token, "session-live:" + token
        deadline = time.monotonic() + self.resume_wait
        asked = False
        while True:
            raw = await store.take(key)
            if raw is not None:
                return raw
            live = await store.get(live_key)
            if live is None:
                # The old connection may have finished closing in between.
                return await store.take(key)
            if not asked:
                asked = True
                await self._take_over(live)
            if time.monotonic() >= deadline:
                log.info("session %s…: the old connection did not end in time", token[:6])
                return None
            await asyncio.sleep(_POLL)

    async def _take_over(self, connection_id: str) -> None:
        """Drop the connection ``connection_id`` (here, or on its instance): a resume wins."""
        old = self._app._connections.get(connection_id)
        if old is not None:
            if not old.closed:
                log.info("dropping %s: its session is resumed elsewhere", connection_id)
                old.abort()
            return
        await self._app.rooms.cluster.take_over(connection_id)

    async def restore_rooms(self, conn: Connection, rooms: list[tuple[str, Any]]) -> None:
        """Re-join ``rooms`` with their presence member data (join policies were passed
        already), and mark the session live again."""
        history = self._app.history
        for room, data in rooms:
            try:
                if history.tracks(room):
                    await history.join(conn, room, data=data, admitted=True)
                    history.hold(conn, room, self.hold)
                else:
                    await self._app.rooms.join(conn, room, data=data, admitted=True)
            except Exception as exc:
                log.warning("resumed %s: re-joining %s failed: %r", conn.id, room, exc)
        token = conn.session
        if token is not None:
            try:
                await self.store.put("session-live:" + token, conn.id, LIVE_TTL)
            except Exception as exc:
                log.warning("session store write failed: %r", exc)

    # -- idempotent calls (called by the dispatcher) ---------------------------------------

    async def begin_call(self, conn: Connection, idem: str) -> dict[str, Any] | None:
        """Start the call ``idem`` of ``conn``: None when it is to run (then
        [`end_call`][] must follow), else the kept reply (``{"data"}`` or ``{"error"}``).

        Raises:
            WsError: 409 when the first call still runs after ``idem_wait`` seconds; 503
                when the store fails.
        """
        key = f"idem:{conn.id}:{idem}"
        running = self._calls.get(key)
        try:
            if running is not None:  # the first call runs here: wait for its reply
                async with asyncio.timeout(self.idem_wait):
                    body = await asyncio.shield(running)
                if body is not None:
                    return body
            return await self._begin_shared(key)
        except TimeoutError:
            raise WsError(409, CALL_IN_PROGRESS) from None
        except WsError:
            raise
        except Exception as exc:
            log.warning("idempotent call store failed: %r", exc)
            raise WsError(503, SERVICE_UNAVAILABLE) from None

    async def _begin_shared(self, key: str) -> dict[str, Any] | None:
        store = self.store
        deadline = time.monotonic() + self.idem_wait
        while True:
            if await store.put(key, _PENDING, self.idem_ttl, only_new=True):
                self._calls[key] = asyncio.get_running_loop().create_future()
                return None
            raw = await store.get(key)
            if raw is not None and raw != _PENDING:
                body = _load_body(raw)
                if body is not None:
                    return body
                await store.delete(key)  # unreadable: run the call again
                continue
            if raw is None:
                continue  # expired meanwhile
            if time.monotonic() >= deadline:
                raise TimeoutError
            await asyncio.sleep(_POLL)

    async def end_call(self, conn: Connection, idem: str, body: dict[str, Any] | None) -> None:
        """The call ``idem`` of ``conn`` is over with reply ``body`` (None: it did not
        finish): keep it (not a 429), or free the key."""
        key = f"idem:{conn.id}:{idem}"
        running = self._calls.pop(key, None)
        if running is not None and not running.done():
            running.set_result(body)
        error = body.get("error") if body is not None else None
        text = None
        if body is not None and not (isinstance(error, Mapping) and error.get("code") == 429):
            try:
                text = bytes(_dumps(body)).decode()
            except Exception:
                log.warning("idempotent call reply not kept: it is not JSON")
        try:
            if text is not None:
                await self.store.put(key, text, self.idem_ttl)
            else:
                await self.store.delete(key)
        except Exception as exc:
            log.warning("idempotent call reply not kept: %r", exc)


def _load_snapshot(raw: str) -> dict[str, Any] | None:
    try:
        fields = _loads(raw)
    except ValueError:
        fields = None
    if (
        type(fields) is not dict
        or type(fields.get("id")) is not str
        or type(fields.get("user")) is not str
        or type(fields.get("auth")) is not bool
        or type(fields.get("rooms")) is not list
        or not all(_is_room_entry(entry) for entry in fields["rooms"])
        or type(fields.get("state")) is not dict
        or not (fields.get("expires") is None or type(fields["expires"]) in (int, float))
    ):
        log.warning("dropped an unreadable session snapshot")
        return None
    return fields


def _is_room_entry(entry: Any) -> bool:
    return (
        type(entry) is list
        and len(entry) == 2
        and type(entry[0]) is str
        and (entry[1] is None or type(entry[1]) is dict)
    )


def _load_body(raw: str) -> dict[str, Any] | None:
    try:
        body = _loads(raw)
    except ValueError:
        return None
    if type(body) is not dict or not ("data" in body or "error" in body):
        return None
    return body
