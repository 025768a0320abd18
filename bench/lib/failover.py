"""How long REST triggers are refused when a Redis primary dies: triggers paced at a steady
rate on one node while `kill()` (SIGKILL of a primary) runs at a given moment; the time from
the kill to the first trigger sent after it that is answered 2xx, what was refused
meanwhile, and (with subscribers counting each event by number) whether an event answered
2xx went missing.

What is killed (`Victim`): the primary of a Sentinel set (`SentinelVictim`), or the primary
of a Redis Cluster shard that owns a given key's slot (`ClusterVictim`); each says when the
backplane has a new primary (`switched`) and brings the killed server back as a replica
(`restore`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from bench.lib.publisher import publish
from bench.lib.servers import Server
from bench.lib.subscribers import Subscribers
from tests.helpers.redis_cluster import RedisClusterSet
from tests.helpers.redis_procs import command
from tests.helpers.redis_sentinel import SentinelSet


class Victim(Protocol):
    """The primary a failover run kills. `goal_s`: issue 19's goal for the recovery (the
    backplane's failure detection time + 3 s)."""

    goal_s: float

    def kill(self) -> object: ...

    def switched(self) -> bool:
        """The backplane names a new primary (the nodes can find it from now on)."""
        ...

    def restore(self) -> object:
        """The killed server back as a replica, the backplane settled."""
        ...


class SentinelVictim:
    def __init__(self, sentinel: SentinelSet) -> None:
        self.sentinel = sentinel
        self.goal_s = sentinel.down_after_ms / 1000 + 3
        self.port = 0

    def kill(self) -> object:
        self.port = self.sentinel.kill_primary()
        return self.port

    def switched(self) -> bool:
        """A sentinel names another primary than the killed one."""
        return any(v not in (None, self.port) for v in self.sentinel.sentinel_views())

    def restore(self) -> object:
        return self.sentinel.restart_old_as_replica()


class ClusterVictim:
    """The primary owning `key`'s slot (the busy channel's: the shard a trigger's publish
    runs on)."""

    def __init__(self, cluster: RedisClusterSet, key: str) -> None:
        self.cluster = cluster
        self.slot = cluster.slot_of(key)
        self.goal_s = cluster.node_timeout_ms / 1000 + 3
        self.port = 0

    def kill(self) -> object:
        self.cluster.wait_ok()
        self.port = self.cluster.owner_of_slot(self.slot)
        self.cluster.kill(self.port)
        return self.port

    def switched(self) -> bool:
        """A running node names another owner of the slot (the promoted replica first)."""
        for node in self.cluster.nodes:
            if not node.alive:
                continue
            try:
                for first, last, owner, *_ in command(node.port, "CLUSTER", "SLOTS", timeout=0.5):
                    if int(first) <= self.slot <= int(last) and int(owner[1]) != self.port:
                        return True
            except (redis.RedisError, OSError):
                continue
        return False

    def restore(self) -> object:
        return self.cluster.restart_killed()


def wait_accepting(node: Server, timeout: float = 60, probes: int = 5) -> float:
    """Block until `probes` back-to-back triggers on `node` are all answered 200; returns the
    seconds it took (a node re-registering after a failover refuses meanwhile)."""
    t0 = time.monotonic()
    while True:
        res = publish(node.port, probes, host=node.host)
        if res.ok == probes:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{node.name} refuses triggers: {res.statuses} {res.error_samples}")
        time.sleep(0.2)


def failover_run(
    node: Server,
    kill: Callable[[], object],
    *,
    rate: float,
    before: float,
    window: float,
    subs: Subscribers | None = None,
    switched: Callable[[], bool] | None = None,
    conns: int = 64,
) -> dict[str, Any]:
    """Triggers on `node` at `rate` per second for `before` + `window` seconds, `kill()`
    called `before` seconds in (in a thread; the kill's moment is when it returns, i.e. once
    the killed process is reaped). `subs` (exact accounting, subscribed to the channel the
    publisher triggers on) are asked for what they got. `switched()`, polled every 10 ms
    after the kill, says when the backplane has a new primary (`switch_s`: the backplane's
    share of the recovery; the rest is the nodes'). `conns` connections, so that triggers
    hanging on a dead primary do not hold up the schedule."""
    events = max(1, int(rate * (before + window)))
    if subs is not None:
        subs.count(events)
    killed: list[int] = []
    switch: list[int] = []

    def killer() -> None:
        kill()
        killed.append(time.monotonic_ns())
        deadline = time.monotonic() + before + window
        while switched is not None and time.monotonic() < deadline:
            if switched():
                switch.append(time.monotonic_ns())
                return
            time.sleep(0.01)

    # the publisher signs its triggers first (0.3 s + 40 µs each), then starts its schedule
    timer = threading.Timer(0.3 + events * 40e-6 + before, killer)
    timer.start()
    try:
        res = publish(node.port, events, rate, conns=conns, host=node.host)
    finally:
        timer.join()
    if not killed:
        raise RuntimeError("the kill did not happen")
    kill_ns = killed[0]
    failed = set(res.failed)
    after = [s for s in range(events) if res.sent_ns[s] >= kill_ns]
    first_ok = min((res.answered_ns[s] for s in after if s not in failed), default=None)
    refused = sorted(failed)
    last_refused = max((res.answered_ns[s] for s in refused), default=None)
    got = subs.collect(failed=refused, drain=10) if subs is not None else None
    sent_before = sum(1 for s in range(events) if 0 < res.sent_ns[s] < kill_ns)
    return {
        "rate": rate,
        "events": events,
        "kill_at_s": round((kill_ns - res.start_ns) / 1e9, 2),
        # the figure: from the kill to the first 2xx answer of a trigger sent after it
        "recovery_s": round((first_ok - kill_ns) / 1e9, 3) if first_ok else None,
        "switch_s": round((switch[0] - kill_ns) / 1e9, 3) if switch else None,
        "refused": len(refused),
        "last_refusal_s": round((last_refused - kill_ns) / 1e9, 3) if last_refused else None,
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "sent_before_kill": sent_before,
        "send_lag_max_ms": res.lag_max_ms,  # the schedule kept (conns sufficed)?
        "rtt_max_ms": res.rtt_max_ms,
        "lost_2xx": got["lost"] if got is not None else None,
        "duplicates": got["duplicates"] if got is not None else None,
    }
