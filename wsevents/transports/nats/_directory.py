"""The connection directory: a key-value entry per open connection naming its instance, in
a bucket whose TTL drops the entries of an instance that stopped refreshing them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from typing import Any

from ...exceptions import TransportError
from ._jet import Jet
from ._names import encode_token

__all__ = ["NatsDirectory"]

log = logging.getLogger("wsevents.transports.nats")

_REFRESH_BATCH = 200  # entries written concurrently by the refresh


class NatsDirectory:
    """A [`ConnectionDirectory`][wsevents.ConnectionDirectory] on a JetStream key-value bucket.

    The bucket ``<prefix>directory`` has a TTL of ``ttl`` seconds (a bucket made earlier
    keeps its own); the live instance writes its entries again every third of it, and at
    once when the connection comes back (the server may have lost them).
    """

    def __init__(self, jet: Jet, *, ttl: float, owner: Any) -> None:
        self.jet = jet
        self.ttl = ttl
        self.closed = False
        self._owner = owner
        self._local: dict[str, str] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _bucket(self) -> Any:
        return await self.jet.bucket("directory", ttl=self.ttl)

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id`` (refreshed while open).

        When NATS is unreachable the entry is kept locally and written on reconnect.
        """
        if self.closed:
            return
        self._local[connection_id] = instance_id
        self._ensure_refresh()
        try:
            await self.jet.call("directory write", lambda: self._put(connection_id, instance_id))
        except TransportError as exc:
            log.debug("directory write of %s deferred: %s", connection_id, exc)

    async def unregister_connection(self, connection_id: str) -> None:
        """Delete ``connection_id``'s entry (if NATS is unreachable, it expires)."""
        if self.closed:
            return
        self._local.pop(connection_id, None)
        try:
            await self.jet.call("directory delete", lambda: self._delete(connection_id))
        except TransportError as exc:
            log.debug("directory delete of %s failed (it expires): %s", connection_id, exc)

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None.

        Raises:
            TransportError: NATS cannot answer.
        """
        if self.closed:
            raise TransportError("the NATS transport is closed")

        async def get() -> str | None:
            kv = await self._bucket()
            value, _ = await self.jet.read(kv, encode_token(connection_id))
            return value if isinstance(value, str) else None

        return await self.jet.call(f"directory lookup of {connection_id}", get)

    def wake(self) -> None:
        """Write every entry again now (the connection came back)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop refreshing and delete this process's entries (the transport closes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        local = list(self._local)
        self._local.clear()
        with contextlib.suppress(TransportError):
            for cid in local:
                await self.jet.call("directory delete", functools.partial(self._delete, cid))
        self._wakeup = asyncio.Event()

    async def _put(self, connection_id: str, instance_id: str) -> None:
        kv = await self._bucket()
        await kv.put(encode_token(connection_id), json.dumps(instance_id).encode())

    async def _delete(self, connection_id: str) -> None:
        kv = await self._bucket()
        await kv.delete(encode_token(connection_id))

    def _ensure_refresh(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="wsevents-nats-directory"
            )

    async def _refresh_forever(self) -> None:
        interval = self.ttl / 3
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self.closed:
                return
            snapshot = list(self._local.items())
            for start in range(0, len(snapshot), _REFRESH_BATCH):
                batch = snapshot[start : start + _REFRESH_BATCH]
                try:
                    await self.jet.call(
                        "directory refresh", functools.partial(self._put_many, batch)
                    )
                except TransportError as exc:
                    log.debug("directory refresh failed: %s", exc)
                    break

    async def _put_many(self, entries: list[tuple[str, str]]) -> None:
        """Write ``entries`` again, those still open, concurrently."""
        await asyncio.gather(
            *(self._put(cid, inst) for cid, inst in entries if self._local.get(cid) == inst)
        )
