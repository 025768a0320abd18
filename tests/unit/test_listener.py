"""The pub/sub listener's bookkeeping without a server (tests/cluster runs it on real ones)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.crc import key_slot
from redis.exceptions import MovedError

from pushwire.cluster.redis.listener import SHARDED, Listener, Sub, SubscribeLog, Wakeups


class Timing:
    ping_interval = 1.0
    ping_timeout = 3.0
    silence_limit = 4.0
    backoff_min = 0.1
    backoff_max = 2.0
    chunk = 500


def test_a_moved_slot_leaves_nothing_pending() -> None:
    """MOVED answers a subscribe or an unsubscribe of a slot this server does not own: no
    confirmation will come for either, so neither may stay pending (a channel left with an
    unconfirmed unsubscribe could never be confirmed subscribed again); the refused
    subscribes are handed back for routing, the others' channels are untouched."""
    moved: list[list[bytes]] = []

    def never() -> Any:
        raise AssertionError("no connection in this test")

    lis = Listener(
        "t",
        never,
        list,
        lambda n, d: None,
        Timing(),
        Wakeups(),
        SubscribeLog(),
        SHARDED,
        on_moved=moved.append,
    )
    here, there = b"p:{c:a:x}:bus", b"p:{c:a:y}:bus"
    slot = key_slot(here)
    assert key_slot(there) != slot
    leaving = b"q:{c:a:x}:bus"  # another channel of the same slot
    lis.channels = {
        here: Sub(last_sub=True, subs=1),
        leaving: Sub(last_sub=False, unsubs=1, active=True),
        there: Sub(last_sub=True, subs=1),
    }
    lis._on_redirect(MovedError(f"{slot} 127.0.0.1:7000"))
    assert moved == [[here]]
    assert set(lis.channels) == {there}
    assert lis.channels[there] == Sub(last_sub=True, subs=1)


async def test_subscribes_in_flight_on_a_new_connection_may_be_counted() -> None:
    """A new connection's subscribes go out before the listener is up: meanwhile Redis may
    count it among the subscribers already, and the listener must say so (a publisher that
    believed its own connection not counted would take it for another node's)."""
    sent = asyncio.Event()
    release = asyncio.Event()

    class Conn:
        async def send_command(self, *args: Any, **kwargs: Any) -> None:
            sent.set()
            await release.wait()

    name = b"p:bus:c:a:x"
    log = SubscribeLog()
    lis = Listener("t", Conn, lambda: [name], lambda n, d: None, Timing(), Wakeups(), log)
    assert not lis.may_count(name)
    mark = log.sent
    attach = asyncio.create_task(lis._attach(Conn()))  # type: ignore[arg-type]
    await sent.wait()
    assert not lis.up and lis.may_count(name)
    assert log.since(name, mark) and not log.since(b"p:bus:c:a:y", mark)
    release.set()
    await attach
    assert lis.up and lis.may_count(name)
    await lis._detach(lis._conn)  # type: ignore[arg-type]
    assert not lis.may_count(name)
