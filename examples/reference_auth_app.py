"""The wsevents reference app for authentication after connect.

Run it with ``python -m wsevents run examples.reference_auth_app:app``. A connection is
accepted unauthenticated and must log in with ``rpc /auth/login`` within 2 s (else 4408);
a session ends with 4401 at its expiry unless ``rpc /auth/refresh`` extends it. Tokens
are toy ones: ``"alice"`` and ``"bob"`` (30 s), ``"short:alice"`` and ``"short:bob"``
(2 s). More than 20 handshakes a second from one IP address get HTTP 429.
"""

from __future__ import annotations

from typing import Any

from wsevents import RateLimit, WsError, create_ws_app, use_ws_connection, use_ws_message

app = create_ws_app(
    auth_required=True,
    auth_timeout=2.0,
    handshake_rate=RateLimit(20, per=1.0),
)

USERS = ("alice", "bob")
LONG, SHORT = 30.0, 2.0


def check_token() -> tuple[str, float]:
    """The user and lifetime the message's ``data.token`` grants; 401 for any other."""
    data = use_ws_message().data
    token = data.get("token") if isinstance(data, dict) else None
    if isinstance(token, str):
        user, lifetime = (token[6:], SHORT) if token.startswith("short:") else (token, LONG)
        if user in USERS:
            return user, lifetime
    raise WsError(401, "Unauthorized")


@app.on_message("rpc", "/auth/login", public=True)
def login() -> dict[str, Any]:
    """Log in with ``data.token``: ``{"user", "expires_in"}``."""
    user, lifetime = check_token()
    use_ws_connection().authenticate(user, expires_in=lifetime)  # another user: 403
    return {"user": user, "expires_in": lifetime}


@app.on_message("rpc", "/auth/refresh", public=True)
def refresh() -> dict[str, Any]:
    """Extend the session with a new token of the same user (another user: 403)."""
    return login()


@app.on_message("rpc", "/echo")
def echo() -> Any:
    return use_ws_message().data


@app.on_message("rpc", "/whoami")
def whoami() -> dict[str, str]:
    conn = use_ws_connection()
    return {"user": conn.user, "id": conn.id}
