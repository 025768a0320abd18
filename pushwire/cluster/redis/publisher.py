"""The publishing half of `RedisBroker`: one Lua script per message (`lua/publish.lua`),
auto-pipelined.

The script fails when this node is not registered, publishes, and for a channel or user topic
compares the nodes subscribed to the Redis channel with the nodes the cluster state lists for
it (`chn` / `usr` hash, this node aside), raising `Unavailable("published to X of Y nodes")`
when some cannot have received it, or when a listed node has lost its lease (it cannot vouch
for its subscribers). This node's own subscription is not counted for another node's: the
script is told whether Redis may count it (taken when the pipeline is made), and a publish
that a subscribe of this node to the channel sent after that may have overtaken (it waited
for its connection, or behind a busy server) is refused, as one that found a node missing.
With bus and state on two servers, the state counts the receivers first
(`lua/receivers.lua`, see `_receivers`), and the count is remembered for a while
(`ReceiverCounts`). A publish with history is appended to the topic's stream in the same
script, gets its position line, and echoes back to this node.

Order: messages to one topic go out in the order `publish` was called: pipelines are sent one
at a time, each in call order.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ..base import (
    BusMessage,
    HistoryEvent,
    HistoryPage,
    HistoryPolicy,
    NotRegistered,
    PartialDelivery,
    Position,
    Unavailable,
    encode,
)
from .listener import SubscribeLog
from .scripts import Runner, as_str, to_ms


@dataclass(slots=True)
class _Outgoing:
    topic: str
    name: bytes
    record: str
    data: bytes
    history: tuple[str | bytes | int, ...]  # publish.lua's history arguments, or ('',)
    done: asyncio.Future[Position | None]
    listening: str = "0"  # publish.lua's ARGV[5] (`_own`), taken when its pipeline is made

    @property
    def echo(self) -> bool:
        """With history: it echoes to this node, which counts among its receivers."""
        return self.history != ("",)


Key = tuple[bytes, bool]  # a pub/sub channel, and whether its publishes echo (history)


@dataclass(slots=True)
class _Count:
    need: int
    until: float  # monotonic time after which it is not reused
    mark: str | None  # the channel's join mark seen by the publish after the count


class ReceiverCounts:
    """Bus and state apart: the receiver counts the state gave (`receivers.lua`), remembered
    so that a steady stream of publishes to a channel costs no round trip to the state.

    A count is reused (publish.lua, ARGV[14]) only while it cannot have become a false
    promise:
    - a node that left makes it too high: publish.lua sees fewer subscribers than the count,
      sends nothing and answers STALE, and the publisher counts afresh;
    - a node that joined makes it too low: a node moves the channel's join mark
      (`Publisher.joined`), subscribes on the bus, then is listed by the state; publish.lua
      compares the mark with the one the first publish after the count saw, and answers
      STALE when it moved. Left open: the window a count taken just before a publish always
      has (a node that moved the mark before that publish and was listed after the count),
      and a node that could not reach the bus to move the mark (its subscribe fails, it is
      listed all the same): a reused count misses it for `HOLD` at most, where a fresh one
      would have refused the publish.
    - it is forgotten before any lease it counted on (a listed node's, or this node's own)
      can have run out, as the state told (`ttl`, less `MARGIN`, from before the count was
      asked), after `HOLD` seconds at most, and when the state's or the bus's primary
      changes (a new bus primary may lack the last join marks);
    - a failed count (NOTREG, EXPIRED, unreachable) forgets them all."""

    HOLD = 1.0  # seconds a count is reused at most
    MARGIN = 0.25  # seconds taken off the least lease time left
    LIMIT = 10_000  # counts remembered at most (past it, all are forgotten)

    def __init__(self, changes: Callable[[], int]) -> None:
        self._changes = changes
        self._generation = changes()
        self._counts: dict[Key, _Count] = {}

    def get(self, key: Key, now: float) -> _Count | None:
        """The count to reuse for `key`, if any."""
        if self._changes() != self._generation:
            self.forget()
        found = self._counts.get(key)
        if found is None or found.mark is None or found.until <= now:
            return None
        return found

    def put(self, key: Key, need: int, ttl_ms: int, asked: float) -> None:
        """The state counted `need` for `key`; the leases it counted on last `ttl_ms` more
        (-1: none), from at least `asked` on."""
        self._counts.pop(key, None)
        if ttl_ms < 0 or self._changes() != self._generation:
            return
        until = asked + min(ttl_ms / 1000 - self.MARGIN, self.HOLD)
        if until > asked:
            if len(self._counts) >= self.LIMIT:
                self._counts.clear()
            self._counts[key] = _Count(need, until, None)

    def seen(self, key: Key, mark: str) -> None:
        """The publish right after the count saw the channel's join mark `mark`."""
        found = self._counts.get(key)
        if found is not None and found.mark is None:
            found.mark = mark

    def drop(self, key: Key) -> None:
        self._counts.pop(key, None)

    def forget(self) -> None:
        self._counts.clear()
        self._generation = self._changes()


def _key(o: _Outgoing) -> Key:
    return o.name, o.echo


def _padded(history: tuple[str | bytes | int, ...]) -> tuple[str | bytes | int, ...]:
    """publish.lua's six history arguments (ARGV[7..12]), also without history."""
    return history + ("",) * (6 - len(history))


class Publisher:
    def __init__(
        self,
        scripts: Runner,
        state: Runner | None,
        listening: Callable[[str], bool],
        subscribes: SubscribeLog,
    ) -> None:
        """`scripts` run on the bus; `state`: the state's scripts when the state is another
        server; `listening(topic)`: whether Redis may count this node's own subscription;
        `subscribes`: the subscribes this node's listeners sent."""
        self.node = scripts.node
        self._keys = scripts.keys
        self._scripts = scripts
        self._state = state
        self._listening = listening
        self._subscribes = subscribes
        self._outbox: list[_Outgoing] = []
        self._sender: asyncio.Task[None] | None = None
        self._token = secrets.token_hex(4)  # names this process: its publishes, marks, pipelines
        self._seq = 0
        self._pipelines = 0
        self._marks = 0
        self.counts: ReceiverCounts | None = None
        if state is not None:  # forgotten when either primary changes (a new one may lack marks)
            bus = scripts.watch
            self.counts = ReceiverCounts(lambda: state.watch.changes + bus.changes)

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
        self._seq += 1
        ident = f"{self._token}:{self._seq}"
        hist: tuple[str | bytes | int, ...] = ("",)
        if history is not None:
            hist = (
                topic,
                history.size,
                to_ms(history.ttl),
                to_ms(history.kept_for),
                msg.payload,
                f"{self.node}:{ident}",
            )
        out = _Outgoing(
            topic,
            self._keys.bus(topic).encode(),
            self._keys.record_of_topic(topic) or "",
            encode(msg, self.node, ident),
            hist,
            asyncio.get_running_loop().create_future(),
        )
        self._outbox.append(out)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox())
        return await asyncio.shield(out.done)

    async def joined(self, *topics: str) -> None:
        """This node subscribes to `topics` on the bus and will be listed for them by the
        state: with bus and state apart, move their join marks (see `ReceiverCounts`)."""
        if self.counts is None or not topics:
            return
        self._marks += 1
        mark = f"{self.node}:{self._token}:{self._marks}"
        calls = [(self._keys.joined(topic), mark) for topic in topics]
        for i in range(0, len(calls), 1000):
            try:
                results = await self._scripts.pipeline("joined", calls[i : i + 1000])
            except (RedisError, OSError) as exc:
                raise Unavailable(f"Redis unreachable (join mark): {exc}") from None
            failed = next((r for r in results if isinstance(r, Exception)), None)
            if failed is not None:
                raise Unavailable(f"join mark not set: {failed}")

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
            # a subscribe of this node sent after the flags are taken (`_own`) puts them in
            # doubt (`_overtaken`)
            mark = self._subscribes.sent
            for o in batch:
                o.listening = self._own(o)
            try:
                if self._state is None:
                    calls = [(o.name, o.record, o.listening, o.data, *o.history) for o in batch]
                else:
                    batch, calls = await self._receivers(batch)
                results = await self._run(calls)
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
            stale: list[_Outgoing] = []
            for o, r in zip(batch, results, strict=True):
                if o.done.done():
                    continue
                if isinstance(r, ResponseError) and str(r).startswith("STALE"):
                    stale.append(o)  # not sent: counted afresh and published again, first
                elif isinstance(r, ResponseError):
                    o.done.set_exception(self._refusal(r))
                elif isinstance(r, Exception):
                    o.done.set_exception(Unavailable(f"Redis unreachable (publish): {r}"))
                elif self._overtaken(o, mark):
                    o.done.set_exception(
                        PartialDelivery("this node subscribed meanwhile: receivers not counted")
                    )
                elif self.counts is not None:  # apart: {receivers, offset, epoch, mark}
                    self.counts.seen(_key(o), as_str(r[3]))
                    o.done.set_result(Position(as_str(r[2]), int(r[1])) if o.echo else None)
                elif isinstance(r, list):  # with history: receivers, offset, epoch
                    o.done.set_result(Position(as_str(r[2]), int(r[1])))
                else:
                    o.done.set_result(None)
            if stale:
                assert self.counts is not None
                for o in stale:
                    self.counts.drop(_key(o))
                self._outbox[:0] = stale

    async def _run(self, calls: list[tuple[str | bytes | int, ...]]) -> list[Any]:
        """publish.lua once per call. `NotRegistered` raised by the pipeline itself means a
        new primary ran it (`Scripts._same_primary`: the node's registration there is under
        the generation known before): its answer is not trusted, but the messages may have
        gone out. They are failed as unconfirmed, not as not registered, which says that
        nothing was published (the engine then delivers a history event to its own sockets
        itself: with the echo, they would get it twice)."""
        try:
            return await self._scripts.pipeline("publish", calls) if calls else []
        except NotRegistered as exc:
            raise Unavailable(f"publish not confirmed: {exc}") from None

    def _overtaken(self, o: _Outgoing, mark: int) -> bool:
        """Whether Redis may have counted this node's own subscription as another node's:
        the publish said it was not subscribed, and a subscribe of its own to the channel
        went out after that (at `mark`) and may have run before the script. (With history
        the publish echoes: this node is counted as a receiver anyway.)"""
        return o.listening == "0" and not o.echo and self._subscribes.since(o.name, mark)

    async def _receivers(
        self, batch: list[_Outgoing]
    ) -> tuple[list[_Outgoing], list[tuple[str | bytes | int, ...]]]:
        """Bus and state apart: the state checks this node's registration and counts the nodes
        that must receive each message (one round trip for the batch), *before* it is
        published, unless a count it gave is still remembered (`ReceiverCounts`). Sound
        because a node is subscribed on the bus before the state lists it and is listed until
        after it unsubscribes: a node listed when counted is subscribed when the message goes
        out, unless it left meanwhile (then the publish is refused although nothing was lost:
        a spurious 503, never a false 2xx; with a remembered count it is counted again
        instead). Returns the messages still to publish and their publish.lua arguments; the
        others are failed here."""
        assert self._state is not None and self.counts is not None
        counts, now = self.counts, time.monotonic()
        self._pipelines += 1
        pipeline = f"{self._token}:{self._pipelines}"
        reused: dict[Key, _Count | None] = {}  # one decision per channel and batch
        for o in batch:
            key = _key(o)
            if key not in reused:
                reused[key] = counts.get(key, now)
        ask = {key: o for o in batch if reused[key := _key(o)] is None}
        needs = {key: c.need for key, c in reused.items() if c is not None}
        if ask:
            answers = await self._state.pipeline(
                "receivers", [(o.record, "1" if key[1] else "0") for key, o in ask.items()]
            )
            for key, answer in zip(ask, answers, strict=True):
                if isinstance(answer, list):
                    needs[key] = int(answer[0])
                    counts.put(key, int(answer[0]), int(answer[1]), now)
                    continue
                counts.forget()
                refusal = (
                    self._refusal(answer, self._state)
                    if isinstance(answer, ResponseError)
                    else Unavailable(f"Redis unreachable (publish): {answer}")
                )
                for o in batch:
                    if _key(o) == key and not o.done.done():
                        o.done.set_exception(refusal)
        keep, calls = [], []
        for o in batch:
            key = _key(o)
            if key not in needs or o.done.done():
                continue
            keep.append(o)
            count = reused[key]
            held = ("", "") if count is None else (pipeline, count.mark or "")
            calls.append((o.name, "", o.listening, o.data, *_padded(o.history), needs[key], *held))
        return keep, calls

    def _own(self, o: _Outgoing) -> str:
        """publish.lua's ARGV[5]: whether Redis may count this node's own subscription to the
        topic, as of now, just before the pipeline is made (not when the publish was queued:
        behind a slow pipeline, a subscription made meanwhile would be taken for another
        node's; one made after this: `_overtaken`)."""
        return "1" if self._listening(o.topic) else "0"

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
