"""Where Redis is, named without its password (for logs and error messages)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["describe_client", "redact_url"]

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


def describe_client(client: Any) -> str:
    """Where a client connects, as a URL without credentials (for messages)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    if kwargs.get("host"):
        ssl = "ssl" in getattr(getattr(pool, "connection_class", None), "__name__", "").lower()
        host, port, db = kwargs["host"], kwargs.get("port", 6379), kwargs.get("db", 0)
        return f"{'rediss' if ssl else 'redis'}://{host}:{port}/{db}"
    return f"a {type(pool).__name__}"  # e.g. a Sentinel-managed pool
