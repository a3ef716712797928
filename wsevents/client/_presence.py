"""A presence room as a client sees it: the members, a change listener, count and list.

The server pushes ``presence`` on the room's path with ``{"joins", "leaves"}``; counts and
lists are RPCs to routes the app defines (the reference app's ``/presence/count`` and
``/presence/list``). After a reconnect the room is joined again and the member list
fetched anew, never replayed from the old state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["PresenceChangeHandler", "RoomPresence"]

log = logging.getLogger("wsevents.client")

PresenceChangeHandler = Callable[[dict[str, Any]], None]
"""Called with the data of each ``presence`` push: ``{"joins": [...], "leaves": [...]}``,
after the members were updated (and with the whole list after a resynchronisation:
``{"joins": <every member>, "leaves": <every member gone>}``)."""


class _Client(Protocol):
    async def call(
        self, event: str, path: str, data: Any = None, timeout: float | None = None
    ) -> Any: ...

    def on(self, event: str, pattern: str, handler: Any) -> Callable[[], None]: ...


class RoomPresence:
    """The presence of one room (what [`WsClient.presence`][wsevents.WsClient.presence]
    returns, joined and synchronised).

    Attributes:
        room: the room (the path of its ``presence`` pushes).
        members: user id → member (``{"user", ...member data}``, ``"connections"`` too once
            fetched by a list), the current view.
    """

    def __init__(
        self,
        client: _Client,
        room: str,
        *,
        join: Any = None,
        join_event: str = "join",
        leave_event: str = "leave",
        count_path: str = "/presence/count",
        list_path: str = "/presence/list",
        page_size: int = 100,
    ) -> None:
        self.room = room
        self.members: dict[str, dict[str, Any]] = {}
        self._client = client
        self._join = join
        self._join_event = join_event
        self._leave_event = leave_event
        self._count_path = count_path
        self._list_path = list_path
        self._page_size = page_size
        self._handlers: list[PresenceChangeHandler] = []
        self._syncing: list[dict[str, Any]] | None = None
        self._off: Callable[[], None] | None = None
        self.joined = False
        self.on_leave: Callable[[], object] | None = None

    def on_change(self, handler: PresenceChangeHandler) -> Callable[[], None]:
        """Call ``handler(change)`` after each change of `members`; returns a function
        that removes it."""
        self._handlers.append(handler)

        def off() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return off

    async def count(self) -> dict[str, int]:
        """``{"connections", "users"}`` of the room, on every instance (an RPC)."""
        result: dict[str, int] = await self._client.call(
            "rpc", self._count_path, {"room": self.room}
        )
        return result

    async def list(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """``{"total", "members"}``: a page of the room's users ordered by user id (an RPC)."""
        result: dict[str, Any] = await self._client.call(
            "rpc", self._list_path, {"room": self.room, "offset": offset, "limit": limit}
        )
        return result

    async def start(self) -> None:
        """Listen to the room's pushes, join it and fetch the members."""
        if self._off is None:
            self._off = self._client.on("presence", self.room, self._on_push)
        await self._client.call(self._join_event, self.room, self._join)
        self.joined = True
        await self.sync()

    async def leave(self) -> None:
        """Leave the room and stop listening (the members are forgotten)."""
        self.joined = False
        self.stop_listening()
        self.members.clear()
        if self.on_leave is not None:
            self.on_leave()
        await self._client.call(self._leave_event, self.room)

    def stop_listening(self) -> None:
        """Stop following the room's pushes."""
        if self._off is not None:
            self._off()
            self._off = None

    async def sync(self) -> None:
        """Fetch the whole member list again and replace `members` with it; pushes
        arriving meanwhile are applied on top."""
        self._syncing = []
        try:
            fresh: dict[str, dict[str, Any]] = {}
            offset = 0
            while True:
                page = await self.list(offset, self._page_size)
                for member in page["members"]:
                    fresh[member["user"]] = member
                offset += len(page["members"])
                if not page["members"] or offset >= page["total"]:
                    break
            gone = [{"user": u} for u in self.members if u not in fresh]
            self.members = fresh
            self._emit({"joins": list(fresh.values()), "leaves": gone})
        finally:
            buffered, self._syncing = self._syncing or [], None
        for change in buffered:
            self._apply(change)

    async def _reopened(self) -> None:
        """The connection is back: join again (when joined) and resynchronise."""
        if not self.joined:
            return
        try:
            await self._client.call(self._join_event, self.room, self._join)
            await self.sync()
        except Exception as exc:
            log.debug("presence resync of %s failed: %r", self.room, exc)

    def _on_push(self, push: Any) -> None:
        data = push.data if isinstance(push.data, dict) else None
        if data is None:
            return
        if self._syncing is not None:
            self._syncing.append(data)
            return
        self._apply(data)

    def _apply(self, change: dict[str, Any]) -> None:
        for leave in change.get("leaves") or ():
            if isinstance(leave, dict):
                self.members.pop(str(leave.get("user")), None)
        for join in change.get("joins") or ():
            if isinstance(join, dict) and "user" in join:
                self.members[str(join["user"])] = join
        self._emit(change)

    def _emit(self, change: dict[str, Any]) -> None:
        for handler in list(self._handlers):
            try:
                handler(change)
            except Exception:
                log.exception("presence change handler failed")
