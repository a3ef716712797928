"""What the pub/sub reader and the directory share when they talk to Redis: decoding a
reply, batching commands, naming an error's cause in a message."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import redis.asyncio as aioredis

__all__ = ["RedisClient", "cause", "chunks", "hash_tag", "text"]

RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"
"""A single Redis (or Sentinel-managed) client, or a Redis Cluster client."""


def cause(exc: BaseException) -> str:
    """``Type: message`` of an error, for messages that name the cause."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def text(value: Any) -> str:
    """A Redis reply (bytes or str) as text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``, one command each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def hash_tag(name: str) -> str:
    """``{name}``: the Redis Cluster hash tag of the keys of one room (or instance), so that
    they all hash to one slot.

    Redis hashes the text between a key's first ``{`` and the first ``}`` after it, when
    that text is not empty. A name that is empty, contains ``}`` or starts with ``~`` is
    replaced by ``~`` and its SHA-256 (a name given as is never starts with ``~``, so the
    two never collide).
    """
    if name and "}" not in name and not name.startswith("~"):
        return "{" + name + "}"
    return "{~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest() + "}"
