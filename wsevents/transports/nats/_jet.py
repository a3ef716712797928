"""The shared JetStream side of the stores: one lazily made bucket or stream per use,
bounded calls, and compare-and-set updates of JSON documents."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import nats.js.errors as jse
from nats.js.kv import KeyValue

from ...exceptions import TransportError

__all__ = ["CAS_ATTEMPTS", "Jet", "wrong_last_sequence"]

log = logging.getLogger("wsevents.transports.nats")

T = TypeVar("T")

CAS_ATTEMPTS = 200
"""Compare-and-set rounds before an update gives up (each lost round means another writer
changed the document meanwhile)."""


def wrong_last_sequence(exc: BaseException) -> bool:
    """True for JetStream's answer to a compare-and-set whose expected revision was stale."""
    if isinstance(exc, jse.KeyWrongLastSequenceError):
        return True
    return isinstance(exc, jse.APIError) and exc.err_code in (10071, 10164)


class Jet:
    """What the stores share: the connection's JetStream context, the names, the timeout.

    ``context()`` is the owner's: it returns the JetStream context of the live connection,
    or raises [`TransportError`][wsevents.TransportError] when there is none.
    """

    def __init__(
        self,
        *,
        context: Callable[[], Any],
        name_prefix: str,
        subject_prefix: str,
        command_timeout: float,
        url: Callable[[], str],
    ) -> None:
        self.context = context
        self.name_prefix = name_prefix  # for bucket and stream names
        self.subject_prefix = subject_prefix  # first subject token
        self.command_timeout = command_timeout
        self.url = url
        self._buckets: dict[str, KeyValue] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self) -> None:
        """Drop the cached handles (a new connection, maybe to a server that lost them)."""
        self._buckets.clear()
        self._locks.clear()

    async def call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` within ``command_timeout``; a failure is a TransportError."""
        try:
            async with asyncio.timeout(self.command_timeout):
                return await make()
        except TransportError:
            raise
        except Exception as exc:
            reason = (
                f"no answer within {self.command_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else type(exc).__name__
            )
            raise TransportError(f"NATS at {self.url()}: {what} failed: {reason}") from exc

    async def bucket(self, suffix: str, *, ttl: float | None = None) -> KeyValue:
        """The key-value bucket ``<prefix><suffix>``, made on first use (an existing bucket is
        used as it is, whatever its TTL)."""
        kv = self._buckets.get(suffix)
        if kv is not None:
            return kv
        lock = self._locks.setdefault(suffix, asyncio.Lock())
        async with lock:
            kv = self._buckets.get(suffix)
            if kv is not None:
                return kv
            name = self.name_prefix + suffix
            js = self.context()
            try:
                kv = cast(KeyValue, await js.key_value(name))
            except jse.BucketNotFoundError:
                params: dict[str, Any] = {"bucket": name, "history": 1}
                if ttl is not None:
                    params["ttl"] = ttl
                try:
                    kv = await js.create_key_value(**params)
                except jse.BadRequestError:  # made by another instance meanwhile
                    kv = await js.key_value(name)
            self._buckets[suffix] = kv
            assert kv is not None
            return kv

    async def read(self, kv: KeyValue, key: str) -> tuple[Any, int]:
        """The JSON document at ``key`` and its revision; ``(None, revision)`` when absent
        (the revision of its delete marker, or 0)."""
        try:
            entry = await kv.get(key)
        except jse.KeyNotFoundError as exc:
            revision = exc.entry.revision if exc.entry is not None else 0
            return None, revision or 0
        value = entry.value
        return (json.loads(value) if value else None), entry.revision or 0

    async def documents(self, kv: KeyValue, prefix: str = "") -> list[tuple[str, Any, int]]:
        """Every live key under ``prefix`` with its JSON document and revision, read in one
        pass over the bucket's stream (an ordered consumer), not a request per key."""
        watcher: Any = await kv.watchall(ignore_deletes=True)
        found: list[tuple[str, Any, int]] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket holds now
                    break
                if entry.key.startswith(prefix) and entry.value:
                    found.append((entry.key, json.loads(entry.value), entry.revision or 0))
        finally:
            await watcher.stop()
        return found

    async def modify(
        self,
        bucket: str,
        key: str,
        change: Callable[[Any], tuple[Any, T]],
        *,
        ttl: float | None = None,
    ) -> T:
        """Apply ``change`` to the document at ``key`` atomically (compare-and-set).

        ``change(document)`` (None when absent) returns ``(new document, result)``; the new
        document is written unless it is the same object as the old one (nothing to do), and
        deleted when it is None. On a concurrent write, ``change`` runs again on the new
        document. Returns the result of the round that was written.
        """

        async def run() -> T:
            kv = await self.bucket(bucket, ttl=ttl)
            for _ in range(CAS_ATTEMPTS):
                document, revision = await self.read(kv, key)
                new, result = change(document)
                if new is document:
                    return result
                try:
                    if new is None:
                        if document is not None:
                            await kv.delete(key, last=revision)
                    else:
                        data = json.dumps(new, separators=(",", ":")).encode()
                        await kv.update(key, data, last=revision)
                except Exception as exc:
                    if wrong_last_sequence(exc):
                        continue
                    raise
                return result
            raise TransportError(f"{key}: too many concurrent writers")

        return await self.call(f"update of {key}", run)
