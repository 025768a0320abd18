"""The engine's operation gate: a resync writes a snapshot of this node while no client
action is half done (its hub change made, its state call still to come). Every operation
passes the gate, wherever it was started from: also from a task that was created while
another operation ran (a flush round, a bus subscription, anything spawned)."""

from __future__ import annotations

import asyncio

import pytest

from pushwire.apps.model import App
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.testing import FakeConnection, make_node

APP = App(id="1", key="k", secret="s")
CONFIG = Config(server=ServerConfig(), cluster=ClusterConfig(), apps=(APP,))


async def until(cond, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0)


@pytest.mark.parametrize("attempt", range(12))
async def test_operation_spawned_inside_an_operation_waits_for_resync(attempt):
    node = make_node(CONFIG)
    engine = node.engine
    await engine.start()
    try:
        first, second = FakeConnection(APP), FakeConnection(APP)
        await engine.connect(first)
        await engine.connect(second)
        state = engine.state
        real_subscribe = state.subscribe
        release = {"a": asyncio.Event(), "b": asyncio.Event()}
        entered: set[str] = set()
        spawned: list[asyncio.Task[None]] = []

        async def subscribe(app_id, channel, member, limit):
            entered.add(channel)
            if channel == "a":
                # inside operation A: something starts a task that later runs an operation
                spawned.append(asyncio.create_task(engine.subscribe(second, "b", None)))
            joined = await real_subscribe(app_id, channel, member, limit)
            await release[channel].wait()  # a slow reply: counted, not yet in the hub
            return joined

        state.subscribe = subscribe  # type: ignore[method-assign]
        op_a = asyncio.create_task(engine.subscribe(first, "a", None))
        await until(lambda: "a" in entered)
        for _ in range(attempt):  # the spawned operation gets varying head starts
            await asyncio.sleep(0)
        resync = asyncio.create_task(engine.link.resync(lost=False))
        await asyncio.sleep(0)
        release["a"].set()
        await op_a
        for _ in range(5):
            await asyncio.sleep(0)
        release["b"].set()
        await asyncio.wait_for(resync, 5)
        await asyncio.wait_for(spawned[0], 5)
        state.subscribe = real_subscribe  # type: ignore[method-assign]
        # one socket on each channel: neither counted twice (snapshot + late state call)
        assert (await state.channel_stats("1", "a")).subscription_count == 1
        assert (await state.channel_stats("1", "b")).subscription_count == 1
        assert engine.link.ops == 0
    finally:
        await engine.stop()
