"""The publishing half of `RedisBroker`: one Lua script per message (`lua/publish.lua`),
auto-pipelined.

The script fails when this node is not registered, publishes, and for a channel or user topic
compares the nodes subscribed to the Redis channel with the nodes the cluster state lists for
it (`chn` / `usr` hash, this node aside), raising `Unavailable("published to X of Y nodes")`
when some cannot have received it, or when a listed node has lost its lease (it cannot vouch
for its subscribers). With bus and state on two servers, the state counts the receivers first
(`lua/receivers.lua`, see `_receivers`). A publish with history is appended to the topic's
stream in the same script, gets its position line, and echoes back to this node.

Order: messages to one topic go out in the order `publish` was called: pipelines are sent one
at a time, each in call order.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from ..base import (
    BusMessage,
    HistoryEvent,
    HistoryPage,
    HistoryPolicy,
    PartialDelivery,
    Position,
    Unavailable,
    encode,
)
from .scripts import Runner, as_str, to_ms


@dataclass(slots=True)
class _Outgoing:
    name: bytes
    record: str
    listening: str
    data: bytes
    history: tuple[str | bytes | int, ...]  # publish.lua's history arguments, or ('',)
    done: asyncio.Future[Position | None]


def _padded(history: tuple[str | bytes | int, ...]) -> tuple[str | bytes | int, ...]:
    """publish.lua's six history arguments (ARGV[7..12]), also without history."""
    return history + ("",) * (6 - len(history))


class Publisher:
    def __init__(
        self, scripts: Runner, state: Runner | None, listening: Callable[[str], bool]
    ) -> None:
        """`scripts` run on the bus; `state`: the state's scripts when the state is another
        server; `listening(topic)`: whether Redis may count this node's own subscription."""
        self.node = scripts.node
        self._keys = scripts.keys
        self._scripts = scripts
        self._state = state
        self._listening = listening
        self._outbox: list[_Outgoing] = []
        self._sender: asyncio.Task[None] | None = None
        self._token = secrets.token_hex(4)  # names this process's history publishes
        self._seq = 0

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout`) for what was published to go out."""
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=timeout)

    async def publish(
        self, topic: str, msg: BusMessage, history: HistoryPolicy | None = None
    ) -> Position | None:
        """Queue the message for the next pipeline and wait for its verdict.

        Auto-pipelining: publishes made while a pipeline is in flight go out together in the
        next one, one round trip for all of them, in call order (pipelines are sent one at
        a time, so order holds across them too). A burst of triggers thus costs a few round
        trips, not one each, and no publish waits behind another's reply."""
        hist: tuple[str | bytes | int, ...] = ("",)
        if history is not None:
            self._seq += 1
            hist = (
                topic,
                history.size,
                to_ms(history.ttl),
                to_ms(history.kept_for),
                msg.payload,
                f"{self.node}:{self._token}:{self._seq}",
            )
        out = _Outgoing(
            self._keys.bus(topic).encode(),
            self._keys.record_of_topic(topic) or "",
            "1" if self._listening(topic) else "0",
            encode(msg, self.node),
            hist,
            asyncio.get_running_loop().create_future(),
        )
        self._outbox.append(out)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox())
        return await asyncio.shield(out.done)

    async def history(
        self,
        topic: str,
        since: int | None,
        limit: int,
        policy: HistoryPolicy,
        max_bytes: int = 0,
    ) -> HistoryPage:
        reply = await self._scripts.run(
            "history",
            topic,
            "" if since is None else since,
            limit,
            to_ms(policy.ttl),
            max_bytes,
        )
        epoch, top, complete = as_str(reply[0]), int(reply[1]), bool(int(reply[2]))
        events = [
            HistoryEvent(int(reply[i]), bytes(reply[i + 1]), int(reply[i + 2]) / 1000)
            for i in range(3, len(reply) - 2, 3)
        ]
        return HistoryPage(Position(epoch, top), events, complete)

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                if self._state is None:
                    calls = [(o.name, o.record, o.listening, o.data, *o.history) for o in batch]
                else:
                    batch, calls = await self._receivers(batch)
                results = await self._scripts.pipeline("publish", calls) if calls else []
            except (RedisError, OSError, Unavailable) as exc:
                err = (
                    exc
                    if isinstance(exc, Unavailable)
                    else Unavailable(f"Redis unreachable (publish): {exc}")
                )
                for o in batch:
                    if not o.done.done():
                        o.done.set_exception(err)
                continue
            for o, r in zip(batch, results, strict=True):
                if o.done.done():
                    continue
                if isinstance(r, ResponseError):
                    o.done.set_exception(self._refusal(r))
                elif isinstance(r, Exception):
                    o.done.set_exception(Unavailable(f"Redis unreachable (publish): {r}"))
                elif isinstance(r, list):  # with history: receivers, offset, epoch
                    o.done.set_result(Position(as_str(r[2]), int(r[1])))
                else:
                    o.done.set_result(None)

    async def _receivers(
        self, batch: list[_Outgoing]
    ) -> tuple[list[_Outgoing], list[tuple[str | bytes | int, ...]]]:
        """Bus and state apart: the state checks this node's registration and counts the nodes
        that must receive each message (one round trip for the batch), *before* it is
        published. Sound because a node is subscribed on the bus before the state lists it
        and is listed until after it unsubscribes: a node listed when counted is subscribed
        when the message goes out, unless it left meanwhile (then the publish is refused
        although nothing was lost: a spurious 503, never a false 2xx). Returns the messages
        still to publish and their publish.lua arguments; the others are failed here."""
        assert self._state is not None
        checks = await self._state.pipeline(
            "receivers", [(o.record, "0" if o.history == ("",) else "1") for o in batch]
        )
        keep, calls = [], []
        for o, need in zip(batch, checks, strict=True):
            if isinstance(need, ResponseError):
                o.done.set_exception(self._refusal(need, self._state))
            elif isinstance(need, Exception):
                o.done.set_exception(Unavailable(f"Redis unreachable (publish): {need}"))
            else:
                keep.append(o)
                calls.append((o.name, "", o.listening, o.data, *_padded(o.history), int(need)))
        return keep, calls

    def _refusal(self, exc: ResponseError, scripts: Runner | None = None) -> Unavailable:
        text = str(exc)
        if text.startswith("SHORT"):
            got, need = text.split()[1:3]
            return PartialDelivery(f"published to {got} of {need} nodes")
        if text.startswith("EXPIRED"):
            return PartialDelivery(
                f"node {text.split()[1]} lost its lease: its subscribers cannot be counted on"
            )
        return (scripts or self._scripts).error("publish", exc)
