"""Where Redis is, named without its password (for logs and error messages)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

__all__ = [
    "CLUSTER_SCHEMES",
    "describe_client",
    "is_cluster_url",
    "parse_cluster_url",
    "redact_url",
]

_PASSWORD_IN_QUERY = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages.

    Works on malformed URLs too (it never raises); when in doubt it hides more.

    Example:
        ``redact_url("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"``
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            rest = f"{user}:***@{host}"
        url = f"{scheme}{sep}{rest}"
    return _PASSWORD_IN_QUERY.sub(r"\1***", url)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""URL schemes of a Redis Cluster (``rediss+cluster``: over TLS)."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes of a ``redis+cluster://[user:password@]host:port[,host:port...]``
    URL, and the client options it implies (``username``, ``password``, ``ssl``).

    A path, if any, may only be ``/`` or ``/0`` (a cluster has one database).

    Raises:
        ValueError: not a cluster URL, no node, or a node without a valid port.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    if "?" in rest or "#" in rest:
        raise ValueError("a Redis Cluster URL takes no query string")
    userinfo, at, hosts = rest.rpartition("@")
    hosts, slash, path = hosts.partition("/")
    if slash and path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    options: dict[str, Any] = {}
    if scheme.lower() == "rediss+cluster":
        options["ssl"] = True
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a node must be host:port, got {item.strip()!r}")
        nodes.append((host, int(port)))
    return nodes, options


def describe_client(client: Any) -> str:
    """Where a client connects, as a URL without credentials (for messages)."""
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:  # a RedisCluster
        names = ",".join(getattr(manager, "startup_nodes", {}) or ()) or "?"
        return f"redis+cluster://{names}"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    if kwargs.get("host"):
        ssl = "ssl" in getattr(getattr(pool, "connection_class", None), "__name__", "").lower()
        host, port, db = kwargs["host"], kwargs.get("port", 6379), kwargs.get("db", 0)
        return f"{'rediss' if ssl else 'redis'}://{host}:{port}/{db}"
    return f"a {type(pool).__name__}"  # e.g. a Sentinel-managed pool
