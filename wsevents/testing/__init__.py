"""Testing helpers: fake contexts, an in-process client, conformance suites, a cluster harness.

- ``wsevents.testing.contexts``: fake connection and message contexts, ``RecordingSocket``;
- ``wsevents.testing.client``: ``WsTestClient``, the in-process test client;
- ``wsevents.testing.conformance``: ``check_transport``, ``check_presence_store``,
  ``check_capacity_store``, ``check_session_store``, ``check_history_store`` and
  ``check_rate_limit_store``, the suites every transport and store pass;
- ``wsevents.testing.cluster``: ``WsCluster``, ``serve_memory_cluster``, ``serve_cluster``,
  ``assert_delivered_once``;
- ``wsevents.testing.plugin``: the pytest plugin (entry point ``wsevents``) with the
  fixtures ``ws_client`` and ``ws_cluster``.

Every name is importable from here (``from wsevents.testing import WsTestClient``) and is
loaded on first use: importing ``wsevents.testing`` imports no pytest, and only the two
fixtures load it.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ClientFactory as ClientFactory
    from .client import WsTestClient
    from .cluster import ClusterFactory as ClusterFactory
    from .cluster import WsCluster, assert_delivered_once, serve_cluster, serve_memory_cluster
    from .conformance import (
        CapacityStoreFactory,
        PresenceStoreFactory,
        RateLimitStoreFactory,
        SessionStoreFactory,
        TransportFactory,
        check_capacity_store,
        check_history_store,
        check_presence_store,
        check_rate_limit_store,
        check_session_store,
        check_transport,
    )
    from .contexts import (
        RecordingSocket,
        TestConnectionContext,
        TestMessageContext,
        prepare_test_ws_connection_context,
        prepare_test_ws_message_context,
    )
    from .plugin import ws_client, ws_cluster

__all__ = [
    "CapacityStoreFactory",
    "PresenceStoreFactory",
    "RateLimitStoreFactory",
    "RecordingSocket",
    "SessionStoreFactory",
    "TestConnectionContext",
    "TestMessageContext",
    "TransportFactory",
    "WsCluster",
    "WsTestClient",
    "assert_delivered_once",
    "check_capacity_store",
    "check_history_store",
    "check_presence_store",
    "check_rate_limit_store",
    "check_session_store",
    "check_transport",
    "prepare_test_ws_connection_context",
    "prepare_test_ws_message_context",
    "serve_cluster",
    "serve_memory_cluster",
    "ws_client",
    "ws_cluster",
]

# Where each name lives. ClientFactory and ClusterFactory (the fixtures' types) are not in
# __all__, as before the split, but still importable from here.
_HOME = {
    "ClientFactory": "client",
    "CapacityStoreFactory": "conformance",
    "ClusterFactory": "cluster",
    "PresenceStoreFactory": "conformance",
    "RateLimitStoreFactory": "conformance",
    "RecordingSocket": "contexts",
    "SessionStoreFactory": "conformance",
    "TestConnectionContext": "contexts",
    "TestMessageContext": "contexts",
    "TransportFactory": "conformance",
    "WsCluster": "cluster",
    "WsTestClient": "client",
    "assert_delivered_once": "cluster",
    "check_capacity_store": "conformance",
    "check_history_store": "conformance",
    "check_presence_store": "conformance",
    "check_rate_limit_store": "conformance",
    "check_session_store": "conformance",
    "check_transport": "conformance",
    "prepare_test_ws_connection_context": "contexts",
    "prepare_test_ws_message_context": "contexts",
    "serve_cluster": "cluster",
    "serve_memory_cluster": "cluster",
    "ws_client": "plugin",
    "ws_cluster": "plugin",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: the fixtures need pytest, which a script running
    # check_transport may not have, and pytest imports this package (through the plugin)
    # before ``pytest --cov`` starts measuring.
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
