"""Contract tests of `ClusterState` (and the leases of `Liveness`), the same functions against
every backend (the `backend_factory` fixture: memory, redis, redis-split, redis-cluster; see
tests/helpers/contract_backends.py): two or three nodes of one cluster decide together.

- connections: the quota holds under concurrent connects;
- channels: counts, and exactly one `occupied` / `vacated` among concurrent joins and leaves;
- presence: a member's first and last socket across nodes, versions that order the decisions,
  a full channel's refusal that changes nothing, 50 concurrent joins decided once each (a
  race: run `race_tries` times, each on a fresh cluster);
- users: sign in and out, first and last socket;
- cache entries and once-only claims with their ttls;
- reaping a dead node once (its records go, it is refused everything until it resyncs), a
  renewed lease spared, a clean stop; resync idempotent, clearing the apps a node lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushwire.cluster.base import (
    AppSnapshot,
    Changes,
    ChannelStats,
    Joined,
    Left,
    Unavailable,
    app_topic,
)
from pushwire.protocol.errors import PresenceLimit
from tests.helpers.contract_backends import APP, APP2, Cluster, bounded, chmsg

pytestmark = [pytest.mark.slow, pytest.mark.redis]


# Connections --------------------------------------------------------------------------------
@bounded()
async def test_connect_quota_is_atomic(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    nodes = (a, b)
    admitted = await asyncio.gather(*(nodes[i % 2].state.connect(APP, 10) for i in range(30)))
    assert sum(admitted) == 10
    assert await a.state.connection_count(APP) == 10
    assert await b.state.connect(APP, 10) is False
    holder = a if any(admitted[0::2]) else b
    await holder.state.disconnect(APP)
    assert await b.state.connection_count(APP) == 9
    assert await b.state.connect(APP, 10) is True
    assert await a.state.connect(APP, 10) is False
    assert await a.state.connect(APP, 0) is True  # no limit
    assert await b.state.connection_count(APP) == 11
    assert await b.state.connection_count(APP2) == 0


# Channels -----------------------------------------------------------------------------------
@bounded()
async def test_channel_counts_occupied_vacated(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.subscribe(APP, "ch", None, 0) == Joined(1, True, False)
    assert await b.state.subscribe(APP, "ch", None, 0) == Joined(2, False, False)
    assert (await a.state.subscribe(APP, "ch", None, 0)).count == 3
    await b.state.subscribe(APP, "private-x", None, 0)
    await b.state.subscribe(APP2, "ch", None, 0)
    assert await b.state.channel_stats(APP, "ch") == ChannelStats(3, None)
    assert await a.state.channels(APP, "") == {
        "ch": ChannelStats(3, None),
        "private-x": ChannelStats(1, None),
    }
    assert await a.state.channels(APP, "private-") == {"private-x": ChannelStats(1, None)}
    assert await a.state.unsubscribe(APP, "ch", None) == Left(2, False, False)
    assert await a.state.unsubscribe(APP, "ch", None) == Left(1, False, False)
    assert await a.state.unsubscribe(APP, "ch", None) == Left(1, False, False)  # a has none
    assert await b.state.unsubscribe(APP, "ch", None) == Left(0, True, False)
    assert await b.state.unsubscribe(APP, "ch", None) == Left(0, False, False)
    assert await a.state.channel_stats(APP, "ch") is None
    assert await a.state.channels(APP, "") == {"private-x": ChannelStats(1, None)}
    assert await a.state.channel_stats(APP2, "ch") == ChannelStats(1, None)

    nodes = (a, b)
    joins = await asyncio.gather(
        *(nodes[i % 2].state.subscribe(APP, "busy", None, 0) for i in range(20))
    )
    assert sum(j.occupied for j in joins) == 1
    assert sorted(j.count for j in joins) == list(range(1, 21))
    lefts = await asyncio.gather(
        *(nodes[i % 2].state.unsubscribe(APP, "busy", None) for i in range(20))
    )
    assert sum(left.vacated for left in lefts) == 1
    assert sorted(left.count for left in lefts) == list(range(20))


# Presence -----------------------------------------------------------------------------------
@bounded()
async def test_presence_first_and_last_socket_across_nodes(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    ch = "presence-room"
    j1 = await a.state.subscribe(APP, ch, ("u1", {"name": "one"}), 100)
    assert (j1.count, j1.occupied, j1.member_added) == (1, True, True)
    assert j1.version > 0
    assert j1.members == {"u1": {"name": "one"}}
    j2 = await b.state.subscribe(APP, ch, ("u1", {"name": "one"}), 100)  # same user, node b
    assert (j2.count, j2.occupied, j2.member_added) == (2, False, False)
    assert j2.version >= j1.version
    assert j2.members == {"u1": {"name": "one"}}
    j3 = await a.state.subscribe(APP, ch, ("u2", [1, 2]), 100)
    assert j3.member_added and j3.version > j1.version
    assert j3.members == {"u1": {"name": "one"}, "u2": [1, 2]}
    assert await b.state.channel_stats(APP, ch) == ChannelStats(3, 2)
    assert await b.state.channels(APP, "presence-") == {ch: ChannelStats(3, 2)}
    assert await b.state.members(APP, ch) == {"u1": {"name": "one"}, "u2": [1, 2]}

    assert await a.state.unsubscribe(APP, ch, "u1") == Left(2, False, False)  # b still has u1
    l2 = await b.state.unsubscribe(APP, ch, "u1")
    assert (l2.count, l2.vacated, l2.member_removed) == (1, False, True)
    assert l2.version > j3.version
    assert await a.state.members(APP, ch) == {"u2": [1, 2]}
    assert await b.state.unsubscribe(APP, ch, "nobody") == Left(1, False, False)  # b has none

    j4 = await a.state.subscribe(APP, ch, ("u2", [1, 2]), 100)  # u2's second socket on a
    assert not j4.member_added
    l3 = await a.state.unsubscribe(APP, ch, "u2")
    assert (l3.count, l3.member_removed) == (1, False)
    l4 = await a.state.unsubscribe(APP, ch, "u2")
    assert (l4.count, l4.vacated, l4.member_removed) == (0, True, True)
    assert l4.version > l2.version
    assert await a.state.members(APP, ch) == {}
    assert await a.state.channel_stats(APP, ch) is None


@bounded()
async def test_presence_limit_refusal_changes_nothing(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    ch = "presence-small"
    await a.state.subscribe(APP, ch, ("u1", 1), 2)
    await b.state.subscribe(APP, ch, ("u2", 2), 2)
    with pytest.raises(PresenceLimit, match=r"presence-small is full \(2 members\)"):
        await a.state.subscribe(APP, ch, ("u3", 3), 2)
    assert await b.state.members(APP, ch) == {"u1": 1, "u2": 2}
    assert await b.state.channel_stats(APP, ch) == ChannelStats(2, 2)
    joined = await b.state.subscribe(APP, ch, ("u1", 1), 2)  # a member's next socket is fine
    assert (joined.count, joined.member_added) == (3, False)
    assert (await b.state.unsubscribe(APP, ch, "u2")).member_removed
    assert (await a.state.subscribe(APP, ch, ("u3", 3), 2)).member_added


@bounded(30)
async def test_presence_concurrent_joins_decide_once(backend_factory: Cluster) -> None:
    for _ in range(backend_factory.race_tries):  # the race again, on a fresh cluster each time
        await backend_factory.start_afresh()
        a, b = await backend_factory.add("a"), await backend_factory.add("b")
        nodes, ch = (a, b), "presence-crowd"
        joins = await asyncio.gather(
            *(nodes[i % 2].state.subscribe(APP, ch, (f"u{i}", {"i": i}), 100) for i in range(50))
        )
        assert all(j.member_added for j in joins)
        assert all(j.members is not None and f"u{i}" in j.members for i, j in enumerate(joins))
        assert len({j.version for j in joins}) == 50
        by_version = sorted(joins, key=lambda j: j.version)
        # versions order the decisions: each one saw exactly the members decided before it
        assert [len(j.members or {}) for j in by_version] == list(range(1, 51))
        assert sum(j.occupied for j in joins) == 1
        members = await a.state.members(APP, ch)
        assert members == {f"u{i}": {"i": i} for i in range(50)}

        lefts = await asyncio.gather(
            *(nodes[i % 2].state.unsubscribe(APP, ch, f"u{i}") for i in range(50))
        )
        assert all(left.member_removed for left in lefts)
        assert len({left.version for left in lefts}) == 50
        assert min(left.version for left in lefts) > by_version[-1].version
        assert sum(left.vacated for left in lefts) == 1
        assert await b.state.members(APP, ch) == {}


# Users --------------------------------------------------------------------------------------
@bounded()
async def test_sign_in_sign_out_first_and_last(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.sign_in(APP, "u1") is True
    assert await b.state.sign_in(APP, "u1") is False
    assert await a.state.sign_in(APP, "u1") is False
    assert await b.state.online_users(APP, ("u1", "u2")) == ["u1"]
    assert await b.state.online_users(APP2, ("u1",)) == []
    assert await a.state.sign_out(APP, "u1") is False
    assert await a.state.sign_out(APP, "u1") is False
    assert await a.state.sign_out(APP, "u1") is False  # a has no socket of u1 left
    assert await b.state.sign_out(APP, "u1") is True
    assert await b.state.sign_out(APP, "u1") is False
    assert await a.state.online_users(APP, ("u1", "u2")) == []

    nodes = (a, b)
    ins = await asyncio.gather(*(nodes[i % 2].state.sign_in(APP, "busy") for i in range(20)))
    assert sum(ins) == 1
    outs = await asyncio.gather(*(nodes[i % 2].state.sign_out(APP, "busy") for i in range(20)))
    assert sum(outs) == 1


# Cache and claims ---------------------------------------------------------------------------
@bounded()
async def test_cache_and_claim_once(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.cache_get(APP, "cache-x") is None
    await a.state.cache_set(APP, "cache-x", b"\x00payload\n", 5.0)
    got = await b.state.cache_get(APP, "cache-x")
    assert got is not None
    assert got[0] == b"\x00payload\n"
    assert 4.0 < got[1] <= 5.0
    assert await b.state.cache_get(APP2, "cache-x") is None
    await a.state.cache_set(APP, "cache-y", b"short", 0.3)
    await backend_factory.advance(0.5)
    assert await b.state.cache_get(APP, "cache-y") is None

    nodes = (a, b)
    claims = await asyncio.gather(*(nodes[i % 2].state.claim_once("k", 0.4) for i in range(10)))
    assert sum(claims) == 1
    assert await a.state.claim_once("other", 0.4) is True
    await backend_factory.advance(0.6)
    assert await b.state.claim_once("k", 5.0) is True
    assert await a.state.claim_once("k", 5.0) is False


# Reaping and resync -------------------------------------------------------------------------
@bounded()
async def test_reap_dead_node_once_then_resync(backend_factory: Cluster) -> None:
    cluster = backend_factory
    a, b, c = await cluster.add("a"), await cluster.add("b"), await cluster.add("c")
    p = "presence-r"
    await a.state.connect(APP, 0)
    await a.state.subscribe(APP, "only-a", None, 0)
    await a.state.subscribe(APP, "shared", None, 0)
    await b.state.subscribe(APP, "shared", None, 0)
    await a.state.subscribe(APP, p, ("ghost", {"g": 1}), 100)
    await a.state.subscribe(APP, p, ("both", {"b": 1}), 100)
    last_join = await b.state.subscribe(APP, p, ("both", {"b": 1}), 100)
    await a.state.sign_in(APP, "ua")
    await a.state.sign_in(APP, "ub")
    await b.state.sign_in(APP, "ub")
    await a.state.subscribe(APP2, "x", None, 0)

    await cluster.expire()  # a stops beating; b and c beat again
    await c.liveness.beat()
    await b.liveness.beat()
    hb = await b.liveness.beat()
    assert hb.registered and hb.dead == ("a",)
    assert hb.alive == frozenset({"b", "c"})

    first, second = await asyncio.gather(b.state.reap("a"), c.state.reap("a"))
    assert bool(first) != bool(second)  # exactly one reaper
    changes = first or second
    assert sorted(changes.vacated) == [(APP, "only-a"), (APP2, "x")]
    assert [r[:3] for r in changes.removed] == [(APP, p, "ghost")]
    assert changes.removed[0][3] > last_join.version
    assert changes.offline == [(APP, "ua")]
    assert not (changes.occupied or changes.added or changes.online)
    assert not await b.state.reap("a")  # once only
    assert not await c.state.reap("nobody")

    assert await b.state.connection_count(APP) == 0
    assert await b.state.channel_stats(APP, "shared") == ChannelStats(1, None)
    assert await b.state.channel_stats(APP, "only-a") is None
    assert await c.state.members(APP, p) == {"both": {"b": 1}}
    assert await c.state.channel_stats(APP, p) == ChannelStats(1, 1)
    assert await c.state.online_users(APP, ("ua", "ub")) == ["ub"]
    assert (await b.liveness.beat()).dead == ()

    # the reaped node: not registered, every state op and publish refused
    assert not (await a.liveness.beat()).registered
    refused: list[Callable[[], Awaitable[Any]]] = [
        lambda: a.state.connect(APP, 0),
        lambda: a.state.disconnect(APP),
        lambda: a.state.subscribe(APP, "z", None, 0),
        lambda: a.state.unsubscribe(APP, "z", None),
        lambda: a.state.sign_in(APP, "q"),
        lambda: a.state.members(APP, p),
        lambda: a.state.channels(APP, ""),
        lambda: a.state.connection_count(APP),
        lambda: a.state.online_users(APP, ("q",)),
        lambda: a.state.cache_set(APP, "c", b"", 1.0),
        lambda: a.state.cache_get(APP, "c"),
        lambda: a.state.claim_once("q", 1.0),
        lambda: a.broker.publish(app_topic(APP), chmsg("z")),
    ]
    for op in refused:
        with pytest.raises(Unavailable, match="not registered"):
            await op()

    snapshot = {
        APP: AppSnapshot(
            connections=1,
            channels={"only-a": 1, "shared": 1, p: 2},
            members={p: {"ghost": ({"g": 1}, 1), "both": ({"b": 1}, 1)}},
            users={"ua": 1, "ub": 1},
        ),
        APP2: AppSnapshot(channels={"x": 1}),
    }
    back = await a.state.resync(snapshot)
    assert sorted(back.occupied) == [(APP, "only-a"), (APP2, "x")]
    assert [x[:4] for x in back.added] == [(APP, p, "ghost", {"g": 1})]
    assert back.added[0][4] > changes.removed[0][3]
    assert back.online == [(APP, "ua")]
    assert not (back.vacated or back.removed or back.offline)
    await a.liveness.register()
    assert (await a.liveness.beat()).registered
    assert await a.state.connection_count(APP) == 1
    assert await b.state.channel_stats(APP, p) == ChannelStats(3, 2)
    assert await b.state.channel_stats(APP, "shared") == ChannelStats(2, None)
    assert await b.state.online_users(APP, ("ua", "ub")) == ["ua", "ub"]


@bounded()
async def test_reap_spares_renewed_lease_and_reap_self_is_clean_stop(
    backend_factory: Cluster,
) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    await a.state.subscribe(APP, "mine", None, 0)
    await a.state.subscribe(APP, "presence-m", ("u", None), 10)
    await a.state.sign_in(APP, "u")
    await a.state.connect(APP, 0)
    await backend_factory.expire()
    await a.liveness.beat()  # a is late, but beats before anybody reaps it
    await b.liveness.beat()
    assert not await b.state.reap("a")
    assert (await a.liveness.beat()).registered
    assert await b.state.channel_stats(APP, "mine") == ChannelStats(1, None)

    stop = await a.state.reap("a")  # a clean stop
    assert sorted(stop.vacated) == [(APP, "mine"), (APP, "presence-m")]
    assert [r[:3] for r in stop.removed] == [(APP, "presence-m", "u")]
    assert stop.offline == [(APP, "u")]
    assert not (await a.liveness.beat()).registered
    assert "a" not in (await b.liveness.beat()).alive
    with pytest.raises(Unavailable):
        await a.state.connect(APP, 0)
    assert await b.state.channel_stats(APP, "mine") is None
    assert await b.state.connection_count(APP) == 0
    assert not await a.state.reap("a")


@bounded()
async def test_resync_is_idempotent_and_clears_missing_apps(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    p = "presence-p"
    snap = {
        APP: AppSnapshot(
            connections=2,
            channels={"c1": 2, p: 1},
            members={p: {"u1": ({"x": 1}, 1)}},
            users={"u1": 1},
        ),
        APP2: AppSnapshot(channels={"c2": 1}),
    }
    first = await a.state.resync(snap)
    assert sorted(first.occupied) == [(APP, "c1"), (APP, p), (APP2, "c2")]
    assert [x[:4] for x in first.added] == [(APP, p, "u1", {"x": 1})]
    assert first.online == [(APP, "u1")]
    assert not (first.vacated or first.removed or first.offline)
    assert await a.state.resync(snap) == Changes()  # twice: nothing changes
    assert not await a.state.resync(snap)
    assert await b.state.connection_count(APP) == 2
    assert await b.state.channel_stats(APP, "c1") == ChannelStats(2, None)
    assert await b.state.members(APP, p) == {"u1": {"x": 1}}

    await b.state.subscribe(APP, p, ("u1", {"x": 1}), 100)
    await b.state.sign_in(APP, "u1")
    changed = await a.state.resync({APP2: AppSnapshot(channels={"c2": 1})})  # APP is gone
    assert changed.vacated == [(APP, "c1")]  # p keeps b's subscriber, u1 b's sockets
    assert not (changed.occupied or changed.added or changed.removed or changed.offline)
    assert await b.state.connection_count(APP) == 0
    assert await b.state.channel_stats(APP, p) == ChannelStats(1, 1)
    assert await b.state.online_users(APP, ("u1",)) == ["u1"]

    counts = await a.state.resync({APP2: AppSnapshot(channels={"c2": 3})})  # a count moves
    assert counts == Changes()
    assert await b.state.channel_stats(APP2, "c2") == ChannelStats(3, None)
    assert await a.state.resync({}) == Changes(vacated=[(APP2, "c2")])
    assert await a.state.resync({}) == Changes()
    no_sockets = {APP: AppSnapshot(members={"presence-z": {"u": (None, 0)}})}
    assert await a.state.resync(no_sockets) == Changes()  # a member without sockets is not held
    assert await b.state.members(APP, "presence-z") == {}

    await a.liveness.deregister()  # resync works when not registered
    alone = await a.state.resync({APP: AppSnapshot(channels={"c9": 1})})
    assert alone == Changes(occupied=[(APP, "c9")])
    with pytest.raises(Unavailable):
        await a.state.channel_stats(APP, "c9")
    assert await b.state.channel_stats(APP, "c9") == ChannelStats(1, None)
