"""The test infrastructure of issue 19 checked against real processes: a Sentinel failover
happens and the helpers see it, a Redis Cluster is made and its slots are where the helpers
say, and the black-hole proxy really holds bytes back while keeping connections open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import MovedError
from redis.sentinel import Sentinel

from tests.helpers.blackhole import BlackholeProxy
from tests.helpers.redis_cluster import RedisClusterSet
from tests.helpers.redis_procs import HOST, NodeSet, RedisSingle, command
from tests.helpers.redis_sentinel import SentinelSet

pytestmark = [pytest.mark.topology, pytest.mark.slow, pytest.mark.redis]

QUIET = 0.5  # seconds a cut connection must stay silent


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _set_replicated(port: int, key: str, value: str) -> None:
    """SET on the primary on `port`, then WAIT on the same connection for one replica."""
    with redis.Redis(port=port, socket_timeout=5) as client:
        pipe = client.pipeline(transaction=False)
        _, acked = pipe.set(key, value).wait(1, 2000).execute()
    assert acked == 1


def test_sentinel_failover_is_seen_and_the_old_primary_rejoins_as_a_replica(
    sentinel_set: SentinelSet,
) -> None:
    s = sentinel_set
    hosts = ",".join(f"{HOST}:{p}" for p in s.sentinel_ports())
    assert s.url() == f"redis+sentinel://{hosts}/pw"
    assert s.url(db=2) == f"redis+sentinel://{hosts}/pw/2"
    old = s.primary_port()
    sentinel_client = Sentinel([(HOST, p) for p in s.sentinel_ports()], socket_timeout=2)
    assert sentinel_client.discover_master("pw") == (HOST, old)
    _set_replicated(old, "before", "1")  # on the replica before the kill

    assert s.kill_primary() == old
    with pytest.raises(redis.ConnectionError):
        command(old, "PING")
    new = s.wait_failover()

    assert new != old
    assert new == s.primary_port()
    assert s.sentinel_views() == [new, new, new]  # the sentinels agree
    assert sentinel_client.discover_master("pw") == (HOST, new)
    assert command(new, "ROLE")[0] == "master"
    assert command(new, "GET", "before") == "1"

    assert s.restart_old_as_replica() == old
    role = command(old, "ROLE")
    assert (role[0], int(role[2]), role[3]) == ("slave", new, "connected")
    assert s.replica_port() == old
    for port in s.sentinel_ports():
        replicas = [_pairs(r) for r in command(port, "SENTINEL", "REPLICAS", "pw")]
        assert [r["flags"] for r in replicas if int(r["port"]) == old] == ["slave"]
    _set_replicated(new, "after", "2")
    assert command(old, "GET", "after") == "2"


def test_cluster_covers_every_slot_names_owners_and_migrates_a_slot_with_its_key(
    redis_cluster: RedisClusterSet,
) -> None:
    c = redis_cluster
    assert c.url() == "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in c.ports())
    slot_map = c.wait_ok()
    assert sum(last - first + 1 for first, last in slot_map) == 16384
    assert len(c.primary_ports()) == 3 and len(c.replica_ports()) == 3
    assert sorted(c.primary_ports() + c.replica_ports()) == sorted(c.ports())
    for port in c.ports():
        assert "cluster_state:ok" in command(port, "CLUSTER", "INFO")

    keys = ["a", "b", "c", "{app-1}:presence", "pw:{private-room}:hist", "pw:{private-room}:meta"]
    for key in keys:
        slot, owner = c.slot_of(key), c.owner_of(key)
        assert slot == key_slot(key.encode())
        command(owner, "SET", key, "v")  # the owner takes it
        for other in set(c.primary_ports()) - {owner}:
            with pytest.raises(MovedError, match=f"^{slot} {HOST}:{owner}"):
                command(other, "SET", key, "v")
    assert c.owner_of("pw:{private-room}:hist") == c.owner_of("pw:{private-room}:meta")
    assert len({c.owner_of(k) for k in ["a", "b", "c"]}) > 1  # spread over the shards

    key = "pw:{private-room}:hist"
    slot, source = c.slot_of(key), c.owner_of(key)
    target = min(set(c.primary_ports()) - {source})
    assert c.migrate_slot(slot, target) == source
    assert c.owner_of(key) == target
    for port in c.ports():  # every node knows
        assert {o for (f, la), o in c.slot_map(port).items() if f <= slot <= la} == {target}
    assert command(target, "GET", key) == "v"
    assert command(target, "GET", "pw:{private-room}:meta") == "v"
    assert command(source, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    with pytest.raises(MovedError, match=f"^{slot} {HOST}:{target}"):
        command(source, "GET", key)


def test_cluster_primary_failover_and_restart(redis_cluster: RedisClusterSet) -> None:
    c = redis_cluster
    key = "{busy-channel}"
    owner = c.owner_of(key)
    _set_replicated(owner, key, "kept")

    assert c.kill_primary_of(key) == owner
    new = c.wait_failover()
    assert new != owner and new == c.owner_of(key)
    assert owner not in c.primary_ports()
    assert command(new, "ROLE")[0] == "master"
    assert command(new, "GET", key) == "kept"

    assert c.restart_killed() == [owner]
    role = command(owner, "ROLE")
    assert (role[0], int(role[2])) == ("slave", new)
    assert c.owner_of(key) == new
    assert len(c.primary_ports()) == 3 and len(c.replica_ports()) == 3


def _silent(sock: socket.socket) -> bool:
    """True if nothing comes on `sock` within QUIET seconds (and it is not closed)."""
    sock.settimeout(QUIET)
    try:
        got = sock.recv(100)
    except TimeoutError:
        return True
    raise AssertionError(f"received {got!r} during the cut")


def _client_id(sock: socket.socket) -> int:
    sock.settimeout(2)
    sock.sendall(b"CLIENT ID\r\n")
    reply = sock.recv(100)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def test_blackhole_cut_stops_bytes_both_ways_on_open_connections(
    redis_server: RedisSingle, blackhole: Callable[[int], BlackholeProxy]
) -> None:
    proxy = blackhole(redis_server.port)
    with (
        socket.create_connection(proxy.address, 2) as conn,
        socket.create_connection(proxy.address, 2) as sub,
    ):
        conn_id = _client_id(conn)
        sub.settimeout(2)
        sub.sendall(b"SUBSCRIBE blackhole-test\r\n")
        assert b"subscribe" in sub.recv(100)
        assert proxy.connections() == 2

        proxy.cut()
        sent_up, sent_down = proxy.bytes_up, proxy.bytes_down
        conn.sendall(b"PING\r\nSET blackhole-key held\r\n")
        assert _silent(conn)  # no answer: the PING did not get through, or its reply back
        assert command(redis_server.port, "GET", "blackhole-key") is None  # not to Redis
        # Redis still counts the subscriber (its connection is open) but nothing reaches it
        assert command(redis_server.port, "PUBLISH", "blackhole-test", "during") == 1
        assert _silent(sub)
        clients = command(redis_server.port, "CLIENT", "LIST")
        assert f"id={conn_id} " in clients  # the connection is open on Redis's side too
        assert (proxy.bytes_up, proxy.bytes_down) == (sent_up, sent_down)
        assert proxy.connections() == 2

        proxy.heal()
        conn.settimeout(2)
        got = b""
        while got.count(b"\r\n") < 2:
            got += conn.recv(100)
        assert got == b"+PONG\r\n+OK\r\n"  # answered on the same connection
        assert _client_id(conn) == conn_id
        assert b"during" in sub.recv(100)
        assert command(redis_server.port, "GET", "blackhole-key") == "held"


async def test_blackhole_from_an_async_test_and_a_connection_made_during_the_cut(
    redis_server: RedisSingle,
) -> None:
    async with BlackholeProxy(redis_server.port) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"PING\r\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        proxy.cut()
        late_reader, late_writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"PING\r\n")
        late_writer.write(b"ECHO late\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readline(), QUIET)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late_reader.readline(), QUIET)
        proxy.heal()
        assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        assert await asyncio.wait_for(late_reader.read(100), 2) == b"$4\r\nlate\r\n"
        for w in (writer, late_writer):
            w.close()
            await w.wait_closed()


def _sockets_to(ports: set[int]) -> list[tuple[str, str]]:
    """This process's TCP sockets whose local or remote port is in `ports`."""
    return [
        (str(c.laddr), c.status)
        for c in psutil.Process().net_connections("tcp")
        if c.laddr and (c.laddr.port in ports or (c.raddr and c.raddr.port in ports))
    ]


def _connect_in_a_loop(
    address: tuple[str, int], clients: list[socket.socket], stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            conn = socket.create_connection(address, timeout=1)
        except OSError:
            continue
        clients.append(conn)
        with contextlib.suppress(OSError):  # reset once the proxy has closed
            conn.sendall(b"PING\r\n")


def test_blackhole_close_while_clients_keep_connecting_leaves_no_socket_open(
    redis_server: RedisSingle,
) -> None:
    """A proxy closed while clients keep connecting (a node reconnecting in a loop) closes
    every connection it accepted and every one it made to the target, late ones included."""
    for _ in range(5):
        proxy = BlackholeProxy(redis_server.port)
        clients: list[socket.socket] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=_connect_in_a_loop, args=(proxy.address, clients, stop))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        while len(clients) < 40:
            time.sleep(0.005)
        proxy.close()
        time.sleep(0.1)  # clients go on connecting (refused) and sending meanwhile
        stop.set()
        for t in threads:
            t.join()
        for conn in clients:
            conn.close()
        assert _sockets_to({proxy.port, redis_server.port}) == []


class _TwoNodes(NodeSet):
    """Two plain servers, and a start that fails after them when asked to."""

    def __init__(self, root: Path, fail: bool) -> None:
        super().__init__(root)
        self.fail = fail

    def _start(self) -> None:
        self.new_node("a").start()
        self.new_node("b").start()
        if self.fail:
            raise RuntimeError("the set's start failed")


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_a_set_leaves_no_process_behind_when_its_start_or_its_test_fails(tmp_path: Path) -> None:
    failing = _TwoNodes(tmp_path / "1", fail=True)
    with pytest.raises(RuntimeError, match="start failed"), failing:
        pass
    assert len(failing.nodes) == 2 and _gone([n.pid for n in failing.nodes])
    pids: list[int] = []
    with pytest.raises(KeyError), _TwoNodes(tmp_path / "2", fail=False) as nodes:
        pids = list(nodes.pids().values())
        assert len(pids) == 2 and not _gone(pids)
        raise KeyError("the test failed")
    assert _gone(pids)
