"""History on Redis: a stream per room, offsets and epoch decided by Lua scripts.

Keys of a room are hash-tagged with the room (``{<room>}``), so that each script touches
one slot:

* ``<prefix>ws:history:{<room>}:epoch``: the stream's epoch (a random id);
* ``<prefix>ws:history:{<room>}:seq``: the offset of the room's last push;
* ``<prefix>ws:history:{<room>}:stream``: a stream whose entry ids are ``<offset>-0``,
  each with ``p`` (the push) and ``t`` (when it was kept, ms, Redis clock), capped by
  ``MAXLEN`` and trimmed by age at every append.

When the epoch key is missing (a new room, a ``FLUSHALL``, a failover to a replica that
never had it, an idle room whose keys expired), a script starts a new epoch and a new
stream, so an offset of the old one is never taken for one of the new.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ...exceptions import TransportError
from ..base import HistoryEntry, StreamPosition
from ._commands import RedisClient, cause, hash_tag, text

__all__ = ["RedisHistory"]

_INIT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: epoch, seq, stream; ARGV: new epoch, payload, size, ttl ms, key expiry ms.
# Returns {offset, epoch}.
_APPEND = (
    _INIT
    + _NOW
    + """
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], offset .. '-0', 'p', ARGV[2], 't', now)
local cutoff = now - tonumber(ARGV[4])
while true do
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][4]) >= cutoff then break end
  redis.call('XDEL', KEYS[3], first[1][1])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return {offset, epoch}
"""
)

# KEYS: epoch, seq, stream; ARGV: new epoch. Returns {offset, epoch}.
_POSITION = (
    _INIT
    + """
return {tonumber(redis.call('GET', KEYS[2]) or '0'), epoch}
"""
)

# KEYS: epoch, seq, stream; ARGV: new epoch, offset, epoch, ttl ms.
# Returns {offset, epoch, 1, offset1, payload1, ...} or {offset, epoch, 0} (cannot fill).
_SINCE = (
    _INIT
    + _NOW
    + """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local since = tonumber(ARGV[2])
if epoch ~= ARGV[3] or since > seq then return {seq, epoch, 0} end
if since == seq then return {seq, epoch, 1} end
local entries = redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+')
if #entries == 0 or entries[1][1] ~= (since + 1) .. '-0' then return {seq, epoch, 0} end
if tonumber(entries[1][2][4]) < now - tonumber(ARGV[4]) then return {seq, epoch, 0} end
local out = {seq, epoch, 1}
for _, entry in ipairs(entries) do
  table.insert(out, string.match(entry[1], '^(%d+)'))
  table.insert(out, entry[2][2])
end
return out
"""
)

KEY_EXPIRY = 86400.0
"""Seconds the keys of an idle history room live (at least the room's ``ttl``)."""


class RedisHistory:
    """A [`HistoryStore`][wsevents.HistoryStore] over Redis (see the module docs for the
    keys).

    Args:
        client: the client whose pool runs the scripts.
        prefix: put before every key name.
        command_timeout: seconds a command may take.
    """

    def __init__(self, client: RedisClient, *, prefix: str, command_timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.command_timeout = command_timeout
        self._append = client.register_script(_APPEND)
        self._position = client.register_script(_POSITION)
        self._since = client.register_script(_SINCE)

    def keys(self, room: str) -> list[str]:
        """The epoch, offset and stream keys of ``room``."""
        base = f"{self.prefix}ws:history:{hash_tag(room)}:"
        return [base + "epoch", base + "seq", base + "stream"]

    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        """Keep ``payload`` as the room's next push (offset and epoch decided atomically)."""
        expiry = int(max(ttl, KEY_EXPIRY) * 1000)
        offset, epoch = await self._run(
            self._append(
                keys=self.keys(room),
                args=[uuid.uuid4().hex, payload, size, int(ttl * 1000), expiry],
            ),
            "append",
        )
        return StreamPosition(int(offset), text(epoch))

    async def position(self, room: str) -> StreamPosition:
        """The room's current position."""
        offset, epoch = await self._run(
            self._position(keys=self.keys(room), args=[uuid.uuid4().hex]), "position"
        )
        return StreamPosition(int(offset), text(epoch))

    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        """The kept pushes after ``offset`` (None when they cannot all be given)."""
        reply = await self._run(
            self._since(
                keys=self.keys(room), args=[uuid.uuid4().hex, offset, epoch, int(ttl * 1000)]
            ),
            "read",
        )
        position = StreamPosition(int(reply[0]), text(reply[1]))
        if not int(reply[2]):
            return position, None
        rest = reply[3:]
        return position, [
            HistoryEntry(int(rest[i]), text(rest[i + 1])) for i in range(0, len(rest), 2)
        ]

    async def _run(self, command: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self.command_timeout):
                return await command
        except Exception as exc:
            raise TransportError(f"history {what} failed: {cause(exc)}") from exc
