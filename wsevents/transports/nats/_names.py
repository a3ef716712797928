"""Subject-safe names: any text as one NATS subject token, JetStream bucket and stream names.

A room name may hold ``/``, ``.``, ``*``, ``>``, spaces and any unicode: none of them may
appear in a NATS subject token. [`encode_token`][] keeps ASCII letters, digits and ``-``
and writes every other UTF-8 byte as ``_`` and two upper-case hex digits, so the result
matches ``[A-Za-z0-9_-]+`` (also a valid key-value key) and [`decode_token`][] gives the
name back. The empty name is ``_``, which no non-empty name encodes to.
"""

from __future__ import annotations

import re

__all__ = ["decode_token", "encode_token", "stream_safe"]

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPED = [chr(b) if b in _PLAIN else f"_{b:02X}" for b in range(256)]
_TOKEN = re.compile(r"(?:[A-Za-z0-9-]|_[0-9A-F]{2})*")


def encode_token(name: str) -> str:
    """``name`` as one subject token of ``[A-Za-z0-9_-]`` (reversible)."""
    if not name:
        return "_"
    return "".join([_ESCAPED[b] for b in name.encode("utf-8")])


def decode_token(token: str) -> str:
    """The name [`encode_token`][] made ``token`` from.

    Raises:
        ValueError: ``token`` is not an encoded name.
    """
    if token == "_":
        return ""
    if not token or _TOKEN.fullmatch(token) is None:
        raise ValueError(f"not an encoded name: {token!r}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode("utf-8")


def stream_safe(prefix: str) -> str:
    """``prefix`` with every character a JetStream name may not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
