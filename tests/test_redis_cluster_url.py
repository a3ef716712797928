"""redis+cluster:// URLs: parsing, the transport they make, the CLI's errors (no server)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from wsevents.transports.redis import RedisClusterTransport, RedisTransport
from wsevents.transports.redis._commands import hash_tag
from wsevents.transports.redis._url import is_cluster_url, parse_cluster_url

from .test_cli import SECRET, one_line_error, run_cli


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    nodes, options = parse_cluster_url("redis+cluster://u%40x:p%3Aw@10.0.0.1:7000, h2:7001/")
    assert nodes == [("10.0.0.1", 7000), ("h2", 7001)]
    assert options == {"username": "u@x", "password": "p:w"}
    assert parse_cluster_url("rediss+cluster://[::1]:7000/0") == ([("::1", 7000)], {"ssl": True})
    assert parse_cluster_url("redis+cluster://:pw@h:1")[1] == {"password": "pw"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:1", r"starts with redis\+cluster://"),
        ("redis+cluster://h", "host:port"),
        ("redis+cluster://h:port", "host:port"),
        ("redis+cluster://h:0", "host:port"),
        ("redis+cluster://h:1,", "host:port"),
        ("redis+cluster://:1", "host:port"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:1?db=0", "no query string"),
    ],
)
def test_a_malformed_cluster_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cluster_url(url)


def test_is_cluster_url_goes_by_the_scheme() -> None:
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("REDISS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1") and not is_cluster_url("h:1")


async def test_from_url_makes_a_cluster_transport_without_io_and_names_no_password() -> None:
    transport = RedisTransport.from_url(f"redis+cluster://:{SECRET}@127.0.0.1:1,127.0.0.1:2")
    assert isinstance(transport, RedisClusterTransport)
    assert isinstance(transport.client, aioredis.RedisCluster)
    assert transport.url == "redis+cluster://:***@127.0.0.1:1,127.0.0.1:2"
    assert not transport.connected
    assert await transport.health() is False
    await transport.close()


def test_the_cluster_transport_takes_only_cluster_urls() -> None:
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        RedisClusterTransport.from_url("redis://127.0.0.1:6379/0")
    assert isinstance(
        RedisClusterTransport.from_url("redis+cluster://127.0.0.1:1"), RedisClusterTransport
    )


def test_hash_tags_keep_a_name_or_hash_it_when_redis_would_not_use_it() -> None:
    assert hash_tag("/rooms/1") == "{/rooms/1}"
    assert hash_tag("{x") == "{{x}"  # the tag is "{x": still the whole name
    hashed = [hash_tag(name) for name in ("", "}", "a}b", "~a")]
    assert all(tag.startswith("{~") and tag.count("}") == 1 for tag in hashed)
    assert len(set(hashed)) == 4


def test_a_malformed_cluster_url_on_the_cli_is_one_line_error_without_password() -> None:
    url = f"redis+cluster://:{SECRET}@127.0.0.1:notaport"
    line = one_line_error(
        run_cli("run", "examples.reference_app:app", "--port", "0", "--redis-url", url)
    )
    assert "bad --redis-url redis+cluster://:***@127.0.0.1:notaport" in line
    assert "host:port" in line
    assert SECRET not in line
