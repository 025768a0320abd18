"""The Redis Cluster backend on a real 3 + 3 Redis Cluster: what is particular to it (sharded
pub/sub, the per-group registration check, the node index, the app's channel index, shard
failovers), beside the contract tests every backend passes (test_contract_*.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from pushwire.cluster.base import (
    BusKind,
    BusMessage,
    HistoryPolicy,
    NotRegistered,
    Position,
    Unavailable,
    channel_topic,
)
from pushwire.cluster.redis.clients import Replication
from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.cluster.rediscluster import RedisClusterBackend
from pushwire.cluster.rediscluster.keys import ClusterKeys
from tests.helpers.redis_cluster import RedisClusterSet

APP = "app-1"
NODE_TIMEOUT = 0.5

pytestmark = [pytest.mark.topology, pytest.mark.slow, pytest.mark.redis]


class Node:
    def __init__(self, backend: RedisClusterBackend) -> None:
        self.backend = backend
        self.broker, self.state, self.liveness = backend.broker, backend.state, backend.liveness
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()

    async def recv(self, timeout: float = 3.0) -> BusMessage:
        return await asyncio.wait_for(self.inbox.get(), timeout)


class Nodes:
    def __init__(self, servers: RedisClusterSet) -> None:
        self.servers = servers
        self.prefix = f"t-{uuid.uuid4().hex[:8]}"
        self.all: list[Node] = []

    async def add(self, name: str, timeout: float = NODE_TIMEOUT) -> Node:
        target = parse_redis_url(self.servers.url())
        backend = RedisClusterBackend(target, self.prefix, name, timeout)
        node = Node(backend)
        self.all.append(node)
        await node.liveness.register()
        await node.broker.start(node.inbox.put_nowait)
        return node


def chmsg(channel: str, payload: bytes) -> BusMessage:
    return BusMessage(BusKind.CHANNEL, app=APP, channel=channel, payload=payload)


async def on(port: int, *args: Any) -> Any:
    client = Redis(host="127.0.0.1", port=port)
    try:
        return await client.execute_command(*args)
    finally:
        await client.aclose()


@pytest.fixture
async def nodes(shared_redis_cluster: RedisClusterSet) -> AsyncIterator[Nodes]:
    made = Nodes(shared_redis_cluster)
    yield made
    for n in made.all:
        await n.backend.aclose()


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """A cluster of this module's own, for the tests that migrate slots and kill primaries."""
    with RedisClusterSet(tmp_path_factory.mktemp("own-cluster")) as cluster:
        yield cluster


@pytest.fixture
async def nodes_on_own(own_cluster: RedisClusterSet) -> AsyncIterator[Nodes]:
    made = Nodes(own_cluster)
    yield made
    for n in made.all:
        await n.backend.aclose()


async def test_an_event_goes_to_one_shard_and_a_channel_lives_in_one_slot(nodes: Nodes) -> None:
    a, b = await nodes.add("a"), await nodes.add("b")
    topic = channel_topic(APP, "one-shard")
    await a.state.subscribe(APP, "one-shard", ("u", {}), 10)
    await a.broker.subscribe(topic)
    primaries = nodes.servers.primary_ports()

    async def spublishes() -> dict[int, int]:
        out = {}
        for port in primaries:
            stats = await on(port, "INFO", "commandstats")  # parsed: {"cmdstat_x": {...}}
            assert "cmdstat_publish" not in stats  # never PUBLISH: it goes to every node
            out[port] = int(stats.get("cmdstat_spublish", {}).get("calls", 0))
        return out

    before = await spublishes()
    for i in range(20):
        await b.broker.publish(topic, chmsg("one-shard", b"%d" % i), HistoryPolicy(10, 60))
    after = await spublishes()
    owner = nodes.servers.owner_of(b.backend.keys.bus(topic))
    assert after[owner] - before[owner] >= 20
    assert all(after[p] == before[p] for p in primaries if p != owner)
    assert [(await a.recv()).payload for _ in range(20)] == [b"%d" % i for i in range(20)]

    keys = b.backend.keys
    names = [
        keys.bus(topic),
        keys.hist(topic),
        keys.histm(topic),
        keys.chn(APP, "one-shard"),
        keys.pm(APP, "one-shard"),
        keys.cown(APP, "one-shard", "a"),
        keys.cache(APP, "one-shard"),
    ]
    assert len({nodes.servers.slot_of(n) for n in names}) == 1


async def test_a_reaped_nodes_late_writes_are_refused_in_every_group(nodes: Nodes) -> None:
    """a is reaped while it thinks it is alive (paused): its writes to groups it had records
    in are refused there (the reaper marked them), and to new groups by its frozen index."""
    a, b = await nodes.add("a"), await nodes.add("b")
    await a.state.subscribe(APP, "held", ("u1", {}), 10)
    await a.state.sign_in(APP, "u1")
    await a.state.connect(APP, 0)
    await asyncio.sleep(NODE_TIMEOUT + 0.2)  # a does not beat: its lease runs out
    assert (await b.liveness.beat()).dead == ("a",)
    changes = await b.state.reap("a")
    assert changes.vacated == [(APP, "held")] and changes.offline == [(APP, "u1")]
    assert a.backend.membership.valid  # a has not heard of it
    late = [
        lambda: a.state.subscribe(APP, "held", ("u1", {}), 10),  # a group it was in
        lambda: a.state.sign_in(APP, "u1"),
        lambda: a.state.connect(APP, 0),
        lambda: a.state.subscribe(APP, "new", None, 0),  # a group it never wrote to
        lambda: a.state.sign_in(APP, "u2"),
    ]
    for op in late:
        with pytest.raises(NotRegistered):
            await op()
    assert await b.state.channel_stats(APP, "held") is None
    assert await b.state.channel_stats(APP, "new") is None
    assert await b.state.online_users(APP, ("u1", "u2")) == []
    assert await b.state.connection_count(APP) == 0
    # a learns it at its next beat, resyncs under a new incarnation and is back
    assert not (await a.liveness.beat()).registered
    from pushwire.cluster.base import AppSnapshot

    back = await a.state.resync({APP: AppSnapshot(channels={"held": 1}, users={"u1": 1})})
    assert back.occupied == [(APP, "held")] and back.online == [(APP, "u1")]
    await a.liveness.register()
    assert (await a.state.subscribe(APP, "held", None, 0)).count == 2


async def test_the_node_index_follows_the_groups_a_node_holds(nodes: Nodes) -> None:
    a = await nodes.add("a")
    client = a.backend.client
    idx = a.backend.keys.idx("a")
    await a.state.subscribe(APP, "c1", None, 0)
    await a.state.subscribe(APP, "c2", None, 0)
    await a.state.sign_in(APP, "u1")
    fields = {f.decode() for f in await client.hkeys(idx)} - {"!inc"}
    assert fields == {f"c\n{APP}\nc1", f"c\n{APP}\nc2", f"u\n{APP}\nu1"}
    await a.state.unsubscribe(APP, "c1", None)
    await a.state.sign_out(APP, "u1")
    await a.liveness.beat()  # drops the entries of groups left
    fields = {f.decode() for f in await client.hkeys(idx)} - {"!inc"}
    assert fields == {f"c\n{APP}\nc2"}
    assert await client.exists(a.backend.keys.cown(APP, "c1", "a")) == 0
    await a.state.subscribe(APP, "c1", None, 0)  # added again
    assert f"c\n{APP}\nc1".encode() in await client.hkeys(idx)


async def test_the_channel_index_keeps_the_newest_mark(nodes: Nodes) -> None:
    """Marks of one channel cross on the way to the app's slot: the newest wins, and a
    channel listed but empty is not reported (and is dropped)."""
    a = await nodes.add("a")
    scripts, keys = a.backend.scripts, a.backend.keys
    await a.state.subscribe(APP, "x", None, 0)
    cv = int(await a.backend.client.get(keys.cv(APP, "x")))
    await scripts.run("chs", "mark", APP, "x", cv - 5, "0")  # an older vacate arrives late
    assert set(await a.state.channels(APP, "")) == {"x"}
    await a.state.unsubscribe(APP, "x", None)
    await scripts.run("chs", "mark", APP, "x", cv, "1")  # the occupy's mark arrives late
    await scripts.run("chs", "mark", APP, "ghost", 10**15, "1")  # listed, never occupied
    assert await a.state.channels(APP, "") == {}  # listed but empty: not reported...
    for ch in ("x", "ghost"):
        assert await a.backend.client.hexists(keys.chs(APP), ch) == 0  # ...and dropped


async def test_a_new_primary_makes_the_node_resync(nodes: Nodes) -> None:
    """The watch sees a primary whose previous replication id is one it wrote to (a
    promoted replica): the node answers as not registered until it resynced."""
    a = await nodes.add("a")
    await a.state.subscribe(APP, "w", None, 0)
    watch = a.backend.watch
    address, replid = next(iter(watch.primaries.items()))
    watch.seen("127.0.0.1:2", Replication("slave", replid, ""))  # a replica: not a primary
    assert "127.0.0.1:2" not in watch.primaries and watch.changes == 0
    watch.seen("127.0.0.1:1", Replication("master", "f" * 40, replid))  # a replica promoted
    assert watch.changes == 1
    assert not (await a.liveness.beat()).registered
    with pytest.raises(NotRegistered):
        await a.state.subscribe(APP, "w", None, 0)
    with pytest.raises(Unavailable, match="not registered"):
        await a.broker.publish(channel_topic(APP, "w"), chmsg("w", b"x"))
    await a.state.resync({})
    await a.liveness.register()
    assert (await a.liveness.beat()).registered
    watch.seen(address, Replication("master", replid, ""))  # the same primary: no change
    assert watch.changes == 1


async def test_replica_seeds_are_not_reported_as_primaries(
    shared_redis_cluster: RedisClusterSet,
) -> None:
    """Seeds that list the replicas first: the metrics name the shards' primaries, only."""
    servers = shared_redis_cluster
    seeds = servers.replica_ports() + servers.primary_ports()
    target = parse_redis_url("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in seeds))
    backend = RedisClusterBackend(target, f"t-{uuid.uuid4().hex[:8]}", "seeded", NODE_TIMEOUT)
    try:
        await backend.liveness.register()
        await backend.liveness.beat()  # the sweep reaches every primary
        primaries = {f"127.0.0.1:{p}" for p in servers.primary_ports()}
        [(role, reported, changes)] = backend.primaries()
        assert (role, set(reported.split(",")), changes) == ("cluster", primaries, 0)
        assert set(backend.watch.primaries) == primaries
    finally:
        await backend.aclose()


async def _publisher(
    b: Node, topic: str, rate: float, stop: asyncio.Event
) -> tuple[list[tuple[int, Position]], list[int]]:
    """Publish with history at `rate` per second until `stop`; returns the accepted
    (sequence, position) and the refused sequence numbers."""
    accepted: list[tuple[int, Position]] = []
    refused: list[int] = []
    policy = HistoryPolicy(size=10_000, ttl=120)
    i = 0
    start = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        try:
            pos = await b.broker.publish(topic, chmsg("busy", b"%d" % i), policy)
            assert pos is not None
            accepted.append((i, pos))
        except Unavailable:
            refused.append(i)
        i += 1
    return accepted, refused


async def test_a_busy_channels_slot_migrates_under_publishes(nodes_on_own: Nodes) -> None:
    """The slot of a busy channel moves to another primary while 200 events/s are published
    on it: every event accepted reaches the subscribed node in order, the subscriber is
    moved to the new owner, publishes are accepted again, and the history keeps its epoch."""
    servers = nodes_on_own.servers
    a, b = await nodes_on_own.add("a", 2.0), await nodes_on_own.add("b", 2.0)
    topic = channel_topic(APP, "busy")
    await a.state.subscribe(APP, "busy", None, 0)
    await a.broker.subscribe(topic)
    stop = asyncio.Event()
    task = asyncio.create_task(_publisher(b, topic, 200, stop))
    await asyncio.sleep(1.0)
    name = a.backend.keys.bus(topic)
    slot = servers.slot_of(name)
    source = servers.owner_of(name)
    target = next(p for p in servers.primary_ports() if p != source)
    await asyncio.to_thread(servers.migrate_slot, slot, target, 100, 1.0)
    moved = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    accepted, refused = await task
    sent = [i for i, _ in accepted]
    got = []
    deadline = time.monotonic() + 3.0  # the last accepted ones may still be on their way
    while True:
        while not a.inbox.empty():
            got.append(a.inbox.get_nowait())
        received = [int(m.payload) for m in got]
        if set(sent) <= set(received) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert set(sent) <= set(received), sorted(set(sent) - set(received))
    assert received == sorted(received)  # in order
    after = [i for i, _ in accepted if i > refused[-1]] if refused else sent
    assert len(after) > 100, (len(accepted), refused)  # accepted again, for the last second
    assert len({p.epoch for _, p in accepted}) == 1  # a migration keeps the history's epoch
    offsets = [p.offset for _, p in accepted]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert servers.owner_of(name) == target
    assert a.broker.healthy
    print(f"accepted {len(accepted)}, refused {len(refused)}, moved at {moved:.1f}")




async def test_a_primary_killed_under_load(own_cluster: RedisClusterSet, tmp_path: Any) -> None:
    """Two nodes, subscribers and presence members on both, 40 triggers/s on node A; the
    primary owning the busy channel's slot is SIGKILLed. Triggers are refused (503) until
    its replica is promoted, then accepted; no accepted event is missing at any subscriber;
    the subscribers were moved to the new primary; the history goes on in a new epoch; the
    presence lists on both nodes equal the REST /users."""
    import aiohttp

    from pushwire.client import PushwireClient
    from tests.conftest import ClusterUrl, cluster_config, start_node, stop_node
    from tests.helpers.client import Client
    from tests.helpers.cluster_checks import HISTORY_CONFIG as CONFIG
    from tests.helpers.cluster_checks import exactly_once, members_seen, rest_users
    from tests.helpers.cluster_checks import presence_subscribe as _presence_subscribe
    from tests.helpers.cluster_checks import trigger_numbered as _trigger

    servers = own_cluster
    cfg = cluster_config(ClusterUrl(servers.url()), CONFIG, prefix="fo")
    nodes = [start_node(tmp_path, cfg) for _ in range(2)]
    (_, pa, _), (_, pb, _) = nodes
    subs: list[PushwireClient] = []
    members: list[Client] = []
    # node -> every delivery, in arrival order: (event number, epoch, offset)
    got: dict[int, list[tuple[str, str, int]]] = {pa: [], pb: []}
    try:
        for port in (pa, pb):
            client = PushwireClient("app-key", port=port, max_backoff=0.5)
            await client.connect()
            ch = await client.subscribe("load")

            def on_event(data: Any, meta: dict[str, Any], port: int = port) -> None:
                got[port].append((data, meta.get("epoch", ""), meta.get("offset", -1)))

            ch.bind("n", on_event)
            subs.append(client)
            member = await Client.connect(f"ws://127.0.0.1:{port}/app/app-key?protocol=7")
            await member.send(_presence_subscribe(member, "presence-fo", f"user-{port}"))
            await member.recv_event("pusher_internal:subscription_succeeded")
            members.append(member)
        bus = ClusterKeys("fo").bus(channel_topic("app-id", "load"))
        statuses: list[tuple[int, float, int]] = []  # (event number, time, status)
        killed = 0.0
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < 12.0:
                await asyncio.sleep(max(0.0, start + i / 40 - time.monotonic()))
                if i == 80:
                    servers.kill_primary_of(bus)
                    killed = time.monotonic()
                statuses.append((i, time.monotonic(), await _trigger(session, pa, i)))
                i += 1
        await asyncio.sleep(1.0)
        accepted = [n for n, _, s in statuses if s == 200]
        refused = [(n, t, s) for n, t, s in statuses if s != 200]
        print("node logs:", *(str(p) for _, _, p in nodes))
        for port in (pa, pb):
            numbers = [n for n, _, _ in got[port]]
            exactly_once(numbers, [str(n) for n in accepted], port, got[port])
        log = "".join(p.read_text() for _, _, p in nodes)
        epoch = {int(n): e for n, e, _ in got[pa]}
        assert refused, "the primary's death went unnoticed"
        assert any(t > killed for n, t, s in statuses if s == 200), log[-5000:]
        assert all(s == 503 for _, _, s in refused), refused
        back = min(t for n, t, s in statuses if s == 200 and t > killed) - killed
        last_refusal = max(t for _, t, _ in refused) - killed
        print(f"accepted {len(accepted)}, refused {len(refused)}; first 2xx after the kill "
              f"{back:.2f} s, last refusal {last_refusal:.2f} s")
        assert last_refusal < 10.0
        before = {epoch[n] for n in accepted if n < 80}
        after = {epoch[n] for n in accepted if n > refused[-1][0]}
        assert len(before) == 1 and len(after) == 1 and before != after  # a new epoch
        for port in (pa, pb):
            assert await rest_users(port, "presence-fo") == {f"user-{pa}", f"user-{pb}"}
        seen = await members_seen(members[0], "presence-fo", quiet=0.3)
        assert f"user-{pb}" in seen or not seen  # nothing said it left
    finally:
        for client in subs:
            await client.close()
        for member in members:
            await member.close()
        for proc, _, _ in nodes:
            stop_node(proc)
        await asyncio.to_thread(servers.restart_killed)


async def test_a_slot_moved_away_and_back_is_followed_both_ways(nodes_on_own: Nodes) -> None:
    """The subscriber follows its channel's slot to another primary and back again."""
    servers = nodes_on_own.servers
    a, b = await nodes_on_own.add("a", 2.0), await nodes_on_own.add("b", 2.0)
    topic = channel_topic(APP, "round-trip")
    await a.state.subscribe(APP, "round-trip", None, 0)
    await a.broker.subscribe(topic)
    name = a.backend.keys.bus(topic)
    slot = servers.slot_of(name)
    home = servers.owner_of(name)
    away = next(p for p in servers.primary_ports() if p != home)
    for n, port in enumerate((away, home)):
        await asyncio.to_thread(servers.migrate_slot, slot, port)
        async with asyncio.timeout(10):
            while True:
                try:
                    await b.broker.publish(topic, chmsg("round-trip", b"%d" % n))
                    break
                except Unavailable:  # until a is subscribed on the new owner
                    await asyncio.sleep(0.05)
        assert (await a.recv()).payload == b"%d" % n
    assert a.broker.healthy


async def test_own_subscribe_during_a_publish_is_not_counted_for_another_node(
    nodes_on_own: Nodes,
) -> None:
    """Node b is listed for a channel but not subscribed on the bus (it resubscribes after a
    failover); node a publishes to it while its shard holds scripts back, and meanwhile a
    subscribes itself. Redis then counts a's own connection, which a's publish said it need
    not subtract: the publish must be refused, not reported delivered. (After a failover
    a's own listener subscribed on the new primary while a batch of triggers queued before
    waited: ~1 s of triggers answered 2xx that b never got.) Repeated: the subscribe and the
    publish meet at a different moment each time."""
    servers = nodes_on_own.servers
    a, b = await nodes_on_own.add("a", 2.0), await nodes_on_own.add("b", 2.0)
    for i in range(20):
        channel = f"late-{i}"
        topic = channel_topic(APP, channel)
        await b.state.subscribe(APP, channel, None, 0)  # listed, not on the bus
        with pytest.raises(Unavailable):  # b cannot receive it
            await a.broker.publish(topic, chmsg(channel, b"before"))
        port = servers.owner_of(a.backend.keys.bus(topic))
        await on(port, "CLIENT", "PAUSE", 300, "WRITE")  # scripts wait, SSUBSCRIBE does not
        publishes = [
            asyncio.ensure_future(a.broker.publish(topic, chmsg(channel, b"%d" % n)))
            for n in range(3)
        ]
        await asyncio.sleep(0.01 * (i % 5))
        await a.broker.subscribe(topic)  # confirmed while the publishes wait
        results = await asyncio.gather(*publishes, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), (i, results)
        await a.broker.unsubscribe(topic)


async def test_a_shard_whose_pool_is_full_fails_only_its_own_calls(nodes: Nodes) -> None:
    """One pipeline over several shards: a shard that cannot lend a connection fails the
    calls routed to it; the other shards' calls run and answer."""
    from redis.crc import key_slot
    from redis.exceptions import MaxConnectionsError

    a = await nodes.add("a")
    scripts = a.backend.scripts
    client = scripts.client
    await client.initialize()
    topics = [channel_topic(APP, f"full-{i}") for i in range(30)]
    owner = {
        t: client.nodes_manager.get_node_from_slot(key_slot(scripts.keys.bus(t).encode()))
        for t in topics
    }
    full = owner[topics[0]]
    assert len({n.name for n in owner.values()}) > 1  # the channels span several shards

    # every connection of that shard lent out, none more allowed
    lent, most = list(full._free), full.max_connections
    full._free.clear()
    full.max_connections = len(full._connections)
    try:
        calls = [(scripts.keys.bus(t), "", "1", b"x", "") for t in topics]
        results = await scripts.pipeline("publish", calls)
    finally:
        full._free.extend(lent)
        full.max_connections = most
    for t, r in zip(topics, results, strict=True):
        if owner[t] is full:
            assert isinstance(r, MaxConnectionsError), r
        else:
            assert isinstance(r, int), r  # SPUBLISH's receiver count
