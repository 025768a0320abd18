"""Pushwire nodes over password-protected Redis (`requirepass`, and `masterauth` for the
replicas), as production runs it: a Sentinel set (the URL's password is the data nodes'; the
sentinels are asked without one) and a 3-shard Redis Cluster with a replica per shard.

Two nodes share events and presence and are ready; a failover is followed (the new primary
found: the Redis Cluster's per-heartbeat sweep and the Sentinel discovery authenticate); the
Redis Cluster's side connections (the sweep, the bus listeners) authenticate; and a node given
a wrong password, or none, says so clearly and is not ready."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.cluster.rediscluster.client import ShardWatch, connection_to, make_cluster_client
from pushwire.cluster.rediscluster.membership import Membership
from tests.conftest import (
    BASE_CONFIG,
    ClusterUrl,
    cluster_config,
    cluster_nodes,
    start_node,
    stop_node,
)
from tests.helpers.client import Client, rest, wait_ready
from tests.helpers.cluster_checks import eventually, http, rest_users, ws
from tests.helpers.redis_cluster import RedisClusterSet
from tests.helpers.redis_sentinel import SentinelSet

pytestmark = [pytest.mark.topology, pytest.mark.slow, pytest.mark.redis]

PASSWORD = "s3cr:t/p@ss%"  # characters a URL must percent-encode
Protected = SentinelSet | RedisClusterSet
# what a node logs when Redis refuses it: nothing of the kind may show with the right password
REFUSAL = "Redis refused this node's credentials, check the password in the URL"
REFUSED = re.compile(r"NOAUTH|WRONGPASS|invalid username-password|authenticat", re.IGNORECASE)


@pytest.fixture(scope="module", params=["sentinel", "redis-cluster"])
def protected(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Protected]:
    root = tmp_path_factory.mktemp(f"auth-{request.param}")
    topology: Protected = (
        SentinelSet(root, password=PASSWORD)
        if request.param == "sentinel"
        else RedisClusterSet(root, password=PASSWORD)
    )
    with topology:
        yield topology


async def trigger(port: int, channel: str, data: str) -> int:
    status, _ = await rest(
        http(port), "POST", "/apps/app-id/events", {"name": "e", "channel": channel, "data": data}
    )
    return status


async def failovers(port: int) -> float:
    """The node's `pushwire_redis_failovers_total`, summed over its roles."""
    async with aiohttp.ClientSession() as s, s.get(http(port) + "/metrics") as r:
        text = await r.text()
    rows = [row for row in text.splitlines() if row.startswith("pushwire_redis_failovers_total")]
    assert rows, text
    return sum(float(row.split()[-1]) for row in rows)


async def test_two_nodes_share_events_and_presence(protected: Protected, tmp_path: Path) -> None:
    """A subscriber on B gets what REST on A triggered; a presence member on each node is
    listed by REST on both; both are ready; neither logs a refusal."""
    prefix = f"auth-{uuid.uuid4().hex[:6]}"
    with cluster_nodes(ClusterUrl(protected.url()), tmp_path, BASE_CONFIG, prefix) as nodes:
        (_, a, log_a), (_, b, log_b) = nodes
        clients: list[Client] = []
        try:
            for port in (a, b):
                await wait_ready(http(port))
            sub = await Client.connect(ws(b))
            clients.append(sub)
            await sub.subscribe("auth-chan")
            assert await trigger(a, "auth-chan", "hello") == 200
            assert (await sub.recv_event("e"))["data"] == "hello"
            for port, user in ((a, "ua"), (b, "ub")):
                clients.append(await Client.connect(ws(port)))
                await clients[-1].subscribe("presence-auth", user)

            async def both_listed() -> None:
                for port in (a, b):
                    assert await rest_users(port, "presence-auth") == {"ua", "ub"}

            await eventually(both_listed)
        finally:
            for c in clients:
                await c.close()
        text = log_a.read_text() + log_b.read_text()
        assert not REFUSED.search(text), text


async def test_a_failover_is_followed(protected: Protected, tmp_path: Path) -> None:
    """A primary killed: the replica (synced with `masterauth`) promoted; both nodes find the
    new primary (counted in their metrics) and deliver across again."""
    prefix = f"auth-fo-{uuid.uuid4().hex[:6]}"
    with cluster_nodes(ClusterUrl(protected.url()), tmp_path, BASE_CONFIG, prefix) as nodes:
        (_, a, log_a), (_, b, log_b) = nodes
        sub: Client | None = None
        try:
            for port in (a, b):
                await wait_ready(http(port))
            sub = await Client.connect(ws(b))
            await sub.subscribe("auth-fo")
            assert await trigger(a, "auth-fo", "before") == 200
            assert (await sub.recv_event("e"))["data"] == "before"
            if isinstance(protected, SentinelSet):
                protected.kill_primary()
            else:
                protected.kill(protected.primary_ports()[0])
            await asyncio.to_thread(protected.wait_failover)

            async def new_primary_found() -> None:
                for port in (a, b):
                    assert await failovers(port) >= 1

            await eventually(new_primary_found)
            for port in (a, b):
                await wait_ready(http(port))

            async def delivered_across() -> None:
                assert sub is not None
                data = uuid.uuid4().hex
                assert await trigger(a, "auth-fo", data) == 200
                assert (await sub.recv_event("e"))["data"] == data

            await eventually(delivered_across)
        finally:
            if sub is not None:
                await sub.close()
            if isinstance(protected, SentinelSet):
                await asyncio.to_thread(protected.restart_old_as_replica)
            else:
                await asyncio.to_thread(protected.restart_killed)
        text = log_a.read_text() + log_b.read_text()
        assert not REFUSED.search(text), text


async def test_cluster_side_connections_authenticate(protected: Protected) -> None:
    """The Redis Cluster's connections made outside redis-py's pools: the heartbeat's sweep of
    every primary, and a bus listener's connection (`connection_to`)."""
    if not isinstance(protected, RedisClusterSet):
        pytest.skip("Redis Cluster only")
    watch = ShardWatch(Membership("auth-node"))
    client = make_cluster_client(parse_redis_url(protected.url()), watch, retries=0)
    try:
        await client.initialize()
        await watch.sweep(client)
        primaries = {f"127.0.0.1:{p}" for p in protected.primary_ports()}
        assert set(watch.primaries) == primaries
        for address in sorted(primaries):
            conn = connection_to(client, address)
            try:
                await conn.connect()
                await conn.send_command("PING")
                assert await conn.read_response() in (b"PONG", "PONG")
            finally:
                await conn.disconnect()
    finally:
        await client.aclose()


@pytest.mark.parametrize("given", ["wrong", "none"])
async def test_a_refused_password_is_said_plainly(
    protected: Protected, tmp_path: Path, given: str
) -> None:
    """A wrong password, or none: the node serves its own clients (as with Redis down) but is
    not ready, and says once per role that Redis refused its credentials (no traceback, no
    line per retry)."""
    encoded = f":{quote(PASSWORD, safe='')}@"
    url = protected.url().replace(encoded, ":nope@" if given == "wrong" else "")
    proc, port, log = start_node(tmp_path, cluster_config(ClusterUrl(url), prefix="auth-refused"))
    try:
        await eventually(lambda: _said(log, REFUSAL))
        await asyncio.sleep(2.0)  # four heartbeats: a line per retry would show
        async with aiohttp.ClientSession() as s, s.get(http(port) + "/ready") as r:
            assert r.status == 503, await r.text()
        running = log.read_text()
    finally:
        stop_node(proc)
    refusals = [line for line in running.splitlines() if REFUSAL in line]
    assert 1 <= len(refusals) <= 2, running  # the bus's and the state's
    assert "Traceback" not in log.read_text(), log.read_text()


async def _said(log: Path, what: str) -> None:
    assert what in log.read_text()
