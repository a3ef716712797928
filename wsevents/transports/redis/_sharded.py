"""Sharded pub/sub on a Redis Cluster: SPUBLISH through the cluster client, and one
SSUBSCRIBE connection per master, all read by one session that reconnects as a whole.

A channel lives in the slot its name hashes to, like a key, so room channels spread over
the masters. Every instance subscribes the broadcast and inbox channels on the master
owning their slot: a ``SPUBLISH`` reaches every subscriber of the channel, whatever
instance it runs on.

The reader's *session* is one connection per master of the slot map read when it
started. It is up once every master confirmed every subscription (and a probe channel
per master, for [`health`][wsevents.transports.RedisTransport.health]); when any of
its connections breaks, stops answering PINGs, or Redis unsubscribes one of its channels
(a slot migrated, a master became a replica), the whole session goes down, the slot map
is read again and every channel is subscribed anew on its current master, with the same
state events as a single Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from ._commands import cause, chunks, text
from ._pubsub import PubSub

__all__ = ["ShardedPubSub"]

log = logging.getLogger("wsevents.transports.redis")

_SUBSCRIBE_BATCH = 512


class _Shard:
    """One master's pub/sub connection and the PINGs waiting for a PONG on it."""

    __slots__ = ("conn", "name", "pongs")

    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self.conn = conn
        self.pongs: deque[asyncio.Future[bool]] = deque()


class _Session:
    """One pass of the reader: a connection per master, the slot map they were made for,
    and a probe channel per master."""

    def __init__(
        self, shards: dict[str, _Shard], owners: dict[int, str], probes: dict[str, str]
    ) -> None:
        self.shards = shards
        self.owners = owners  # slot -> master name
        self.probes = probes  # probe channel -> master name

    def shard_of(self, slot: int) -> _Shard | None:
        name = self.owners.get(slot)
        return None if name is None else self.shards.get(name)

    @property
    def is_connected(self) -> bool:
        return all(shard.conn.is_connected for shard in self.shards.values())

    async def disconnect(self, nowait: bool = False) -> None:
        for shard in self.shards.values():
            with contextlib.suppress(Exception):
                await shard.conn.disconnect(nowait=nowait)


class ShardedPubSub(PubSub):
    """[`PubSub`][] over a ``redis.asyncio.RedisCluster``: ``SPUBLISH`` and one
    ``SSUBSCRIBE`` connection per master (see the module docs)."""

    _server = "Redis Cluster"

    def __init__(self, client: aioredis.RedisCluster, **options: Any) -> None:
        super().__init__(client, **options)
        self.client: aioredis.RedisCluster = client
        self._probe_stem = f"{self.prefix}probe:{uuid.uuid4().hex}:"
        # SUNSUBSCRIBEs sent and not yet confirmed, per channel: any other unsubscription
        # comes from Redis (the channel's slot moved).
        self._unsubscribing: dict[str, int] = {}

    # -- publish and health -----------------------------------------------------------------

    async def _publish_one(self, channel: str, payload: str) -> None:
        await self.client.spublish(channel, payload)

    @staticmethod
    def _queue_publish(pipe: Any, channel: str, payload: str) -> None:
        _ = pipe.spublish(channel, payload)  # queued: the pipeline returns it

    async def health(self, timeout: float | None) -> bool:
        """True when a probe published now on each master comes back through its pub/sub
        connection."""
        session = self._conn
        if not self.up or not isinstance(session, _Session):
            return False
        loop = asyncio.get_running_loop()
        arrivals: dict[str, asyncio.Future[None]] = {}
        for _ in session.probes:
            nonce = uuid.uuid4().hex
            arrivals[nonce] = self._probes[nonce] = loop.create_future()
        try:
            async with asyncio.timeout(self.ping_timeout if timeout is None else timeout):
                await asyncio.gather(
                    *(
                        self.client.spublish(channel, nonce)
                        for channel, nonce in zip(session.probes, arrivals, strict=True)
                    )
                )
                await asyncio.gather(*arrivals.values())
        except Exception as exc:
            log.debug("health probe failed: %r", exc)
            return False
        finally:
            for nonce in arrivals:
                self._probes.pop(nonce, None)
        return True

    # -- subscriptions on the live session --------------------------------------------------

    def _live_shard(self, full: str) -> tuple[_Session, _Shard] | None:
        session = self._conn
        if not isinstance(session, _Session):
            return None
        shard = session.shard_of(self.client.keyslot(full))
        if shard is None:
            # The slot map changed under the session: start a new one.
            log.warning("no master of %s's slot in the slot map; reconnecting", full)
            self._abort(session)
            return None
        if not shard.conn.is_connected:
            return None
        return session, shard

    async def subscribe_live(self, channel: str) -> None:
        """SSUBSCRIBE a registered ``channel`` on its master's connection and await the
        confirmation (nothing to do while down: the next session subscribes it)."""
        full = self.prefix + channel
        live = self._live_shard(full)
        if live is None:
            return
        session, shard = live
        confirmed = self._expect_confirmation(full)
        try:
            await shard.conn.send_command("SSUBSCRIBE", full, check_health=False)
            async with asyncio.timeout(self.ping_timeout):
                await confirmed
        except Exception as exc:
            log.warning(
                "subscribing to %s at %s failed (%s); reconnecting", full, shard.name, cause(exc)
            )
            self._abort(session)

    async def unsubscribe(self, channel: str) -> None:
        full = self.prefix + channel
        sub = self._subs.pop(full, None)
        if sub is None:
            return
        sub.cancel()
        live = self._live_shard(full)
        if live is None:
            return
        session, shard = live
        self._unsubscribing[full] = self._unsubscribing.get(full, 0) + 1
        try:
            await shard.conn.send_command("SUNSUBSCRIBE", full, check_health=False)
        except Exception as exc:
            log.warning(
                "unsubscribing from %s at %s failed (%s); reconnecting",
                full,
                shard.name,
                cause(exc),
            )
            self._abort(session)

    # -- the reader -------------------------------------------------------------------------

    async def read_forever(self) -> None:
        attempt = 0
        while not self.closed:
            session: _Session | None = None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    session = await self._connect()
                await self._serve(session)
            except Exception as exc:
                if self.up:
                    attempt = 0  # it was working: retry at once, then back off
                self._went_down(exc)
            finally:
                if session is not None:
                    await self._teardown(session)
            if self.closed:
                return
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _connect(self) -> _Session:
        """Read the slot map again and connect to every master it names."""
        client = self.client
        _ = await client.initialize()
        await client.nodes_manager.initialize()
        owners: dict[int, str] = {}
        masters: dict[str, Any] = {}
        for slot, nodes in client.nodes_manager.slots_cache.items():
            if nodes:
                owners[slot] = nodes[0].name
                masters[nodes[0].name] = nodes[0]
        if not masters:
            raise RedisConnectionError("the cluster names no master")
        shards: dict[str, _Shard] = {}
        try:
            for name, node in masters.items():
                # One attempt per connect: the backoff of read_forever is ours.
                options = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
                shards[name] = _Shard(name, node.connection_class(**options))
            await asyncio.gather(*(shard.conn.connect() for shard in shards.values()))
        except BaseException:
            for shard in shards.values():
                self._abort(shard.conn)
                with contextlib.suppress(Exception):
                    await shard.conn.disconnect(nowait=True)
            raise
        return _Session(shards, owners, self._probe_channels(owners, set(masters)))

    def _probe_channels(self, owners: dict[int, str], masters: set[str]) -> dict[str, str]:
        """A probe channel per master: a name whose slot that master owns."""
        probes: dict[str, str] = {}
        missing = set(masters)
        for i in itertools.count():
            if not missing or i > 100_000:
                break
            channel = f"{self._probe_stem}{i}"
            owner = owners.get(self.client.keyslot(channel))
            if owner in missing:
                probes[channel] = owner
                missing.discard(owner)
        return probes

    async def _serve(self, conn: Any) -> None:
        session: _Session = conn
        # Snapshot and publish the session with no await in between: a subscribe() that
        # runs after this point sends its own SSUBSCRIBE on the new session.
        channels = [*session.probes, *self._subs]
        self._conn = session
        waiters = [self._expect_confirmation(channel) for channel in channels]
        # SSUBSCRIBE takes channels of one slot: one command per slot, one write per master.
        plan: dict[str, dict[int, list[str]]] = {}
        for channel in channels:
            slot = self.client.keyslot(channel)
            owner = session.owners.get(slot)
            if owner is None:
                raise RedisConnectionError(f"slot {slot} is not covered by the cluster")
            plan.setdefault(owner, {}).setdefault(slot, []).append(channel)
        for owner, slots in plan.items():
            shard_conn = session.shards[owner].conn
            commands = [
                ("SSUBSCRIBE", *chunk)
                for in_slot in slots.values()
                for chunk in chunks(in_slot, _SUBSCRIBE_BATCH)
            ]
            for batch in chunks(commands, _SUBSCRIBE_BATCH):
                await shard_conn.send_packed_command(
                    shard_conn.pack_commands(batch), check_health=False
                )
        self._watch_task = self._tasks.spawn(self._watch(session, waiters))
        loop = asyncio.get_running_loop()
        readers = [loop.create_task(self._read(shard)) for shard in session.shards.values()]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what broke the connection
            if not self.closed:
                raise RedisConnectionError("a pub/sub connection ended")
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, shard: _Shard) -> None:
        while not self.closed:
            # math.inf: block without the connection's socket_timeout; the watcher's
            # PINGs notice a dead connection instead.
            response = await shard.conn.read_response(timeout=math.inf, push_request=True)
            self._on_shard_response(shard, response)

    async def _send_pings(self, conn: Any) -> list[asyncio.Future[bool]]:
        """PING every master's connection of the session ``conn``."""
        session: _Session = conn
        loop = asyncio.get_running_loop()
        pongs: list[asyncio.Future[bool]] = []
        for shard in session.shards.values():
            pong: asyncio.Future[bool] = loop.create_future()
            shard.pongs.append(pong)
            pongs.append(pong)
            await shard.conn.send_command("PING", check_health=False)
        return pongs

    def _on_shard_response(self, shard: _Shard, response: Any) -> None:
        if isinstance(response, list | tuple) and response:
            kind = text(response[0]).lower()
            if kind == "smessage" and len(response) >= 3:
                self._on_message(text(response[1]), response[2])
            elif kind == "ssubscribe" and len(response) >= 2:
                self._on_subscribed(text(response[1]))
            elif kind == "sunsubscribe" and len(response) >= 2:
                self._on_unsubscribed(text(response[1]))
            elif kind == "pong":
                self._on_shard_pong(shard)
        elif isinstance(response, bytes | str) and text(response).lower() == "pong":
            self._on_shard_pong(shard)

    @staticmethod
    def _on_shard_pong(shard: _Shard) -> None:
        if shard.pongs:
            pong = shard.pongs.popleft()
            if not pong.done():
                pong.set_result(True)

    def _on_unsubscribed(self, channel: str) -> None:
        pending = self._unsubscribing.get(channel, 0)
        if pending:
            if pending == 1:
                del self._unsubscribing[channel]
            else:
                self._unsubscribing[channel] = pending - 1
            return
        if channel in self._subs or channel.startswith(self._probe_stem):
            # Redis dropped the subscription: the channel's slot moved to another master.
            log.warning(
                "Redis Cluster at %s unsubscribed %s (its slot moved); resubscribing",
                self.url,
                channel,
            )
            if self._conn is not None:
                self._abort(self._conn)

    def _on_message(self, channel: str, data: Any) -> None:
        if channel.startswith(self._probe_stem):
            arrived = self._probes.pop(text(data), None)
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            return
        super()._on_message(channel, data)

    @staticmethod
    def _abort(conn: Any) -> None:
        if isinstance(conn, _Session):
            for shard in conn.shards.values():
                PubSub._abort(shard.conn)
        else:
            PubSub._abort(conn)

    async def _teardown(self, conn: Any) -> None:
        await super()._teardown(conn)
        if isinstance(conn, _Session):
            for shard in conn.shards.values():
                while shard.pongs:
                    pong = shard.pongs.popleft()
                    if not pong.done():
                        pong.set_result(False)
        self._unsubscribing.clear()
