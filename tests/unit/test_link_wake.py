"""A node that learns it lost its registration (a failover to a primary without it) registers
again at once, not at its next heartbeat tick; and a store that keeps refusing does not make
it spin. The heartbeat interval here is long (5 s) so that waiting for the tick would show."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from pushwire import api
from pushwire.apps.model import App
from pushwire.cluster.base import NotRegistered
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.engine.link import URGENT_SPACING
from pushwire.testing import FakeConnection, InProcessCluster

APP = App(id="1", key="k", secret="s")
CONFIG = Config(
    server=ServerConfig(),
    cluster=ClusterConfig(node_timeout=6.0, heartbeat_interval=5.0),
    apps=(APP,),
)


async def until(cond, timeout: float) -> float:
    """Seconds until `cond()` held (TimeoutError past `timeout`)."""
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
async def cluster():
    async with InProcessCluster(CONFIG, n=2) as c:
        yield c


@pytest.mark.parametrize("attempt", range(3))
async def test_both_nodes_registered_again_well_within_a_heartbeat(cluster, attempt):
    """The store loses every registration; each node learns it from a call of its own
    (NotRegistered) and registers again at once; node A then publishes again (it waited for
    B, alive before, to be back) well within one heartbeat interval."""
    a, b = cluster.nodes
    await asyncio.sleep(attempt * 0.07)  # anywhere in the heartbeat's period
    cluster.plane.nodes.clear()  # a new primary that lacks the registrations
    with pytest.raises(api.ApiError):
        await api.trigger(a.engine, APP, {"name": "e", "channel": "c", "data": "1"})
    await b.engine.connect(FakeConnection(APP))  # B's own call meets the refusal
    took = await until(lambda: {"n0", "n1"} <= set(cluster.plane.nodes), timeout=1.0)
    assert took < 1.0
    t0 = time.monotonic()
    while True:  # refused while A waits for B to be seen back (polled, not at the tick)
        try:
            await api.trigger(a.engine, APP, {"name": "e", "channel": "c", "data": "2"})
            break
        except api.ApiError:
            assert time.monotonic() - t0 < 1.5
            await asyncio.sleep(0.02)


async def test_a_store_that_keeps_refusing_is_retried_at_a_bounded_rate(cluster):
    """Every heartbeat answered NotRegistered: the node keeps trying (not at its 5 s tick)
    but at most once per URGENT_SPACING."""
    a = cluster.nodes[0]
    link = a.engine.link
    beats: list[float] = []

    async def refusing_beat():
        beats.append(time.monotonic())
        raise NotRegistered("a new primary answered")

    link.liveness.beat = refusing_beat  # type: ignore[method-assign]
    link.unavailable("publish", NotRegistered("a new primary answered"))
    await asyncio.sleep(2.0)
    assert len(beats) >= 4, beats  # awake: the 5 s tick would make 0
    assert len(beats) <= 2.0 / URGENT_SPACING + 1, beats
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(beats)]
    assert min(gaps) >= URGENT_SPACING * 0.9, gaps
