"""The Redis topologies a cluster of Pushwire nodes runs over, started for a benchmark: the
[cluster] section that points the nodes at them, and the redis-server processes by role (for
their CPU, read from /proc/PID/stat). The processes are the tests' (tests/helpers: one
server, a Sentinel set, a Redis Cluster on free ports, each stopped without leftovers), so
there is one launcher of each for tests and benchmarks alike."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from bench.lib import procs
from tests.helpers.redis_topology import NodeSet, RedisClusterSet, RedisSingle, SentinelSet
from tests.helpers.redis_topology import start_redis as start_single

# a Sentinel set as issue 19 specifies it: a primary, a replica, 3 sentinels, down after 1 s
DOWN_AFTER_MS = 1000
# a Redis Cluster as issue 19 specifies it: 3 shards (with a replica each for a failover),
# cluster-node-timeout 1500 ms
SHARDS = 3
NODE_TIMEOUT_MS = 1500


class Topology(enum.StrEnum):
    SINGLE = "single"  # one node, no Redis (the memory backend)
    ONE = "one"  # every node over one redis-server
    SPLIT = "split"  # bus (pub/sub, history) and state on two redis-servers
    SENTINEL = "sentinel"  # both roles through redis+sentinel:// (primary + replica)
    CLUSTER = "cluster"  # redis+cluster:// over a 3-shard Redis Cluster (replicas: see start)

    @property
    def nodes(self) -> int:
        """How many Pushwire nodes run over it."""
        return 1 if self is Topology.SINGLE else 2


@dataclass
class Backplane:
    """A started topology: `cluster`, the nodes' [cluster] settings; `stop()` ends it."""

    topology: Topology
    cluster: dict[str, str] = field(default_factory=dict)
    singles: dict[str, RedisSingle] = field(default_factory=dict)  # role -> server
    sentinel: SentinelSet | None = None
    redis_cluster: RedisClusterSet | None = None

    def processes(self) -> dict[str, list[int]]:
        """role -> PIDs of the redis-server processes now: "redis", or "bus" and "state",
        or the Sentinel set's "primary", "replica" and "sentinels" (who is primary changes
        with a failover), or "shard-N" (N in the order of their slots)."""
        out = {role: [r.pid] for role, r in self.singles.items()}
        if self.sentinel is not None:
            s = self.sentinel
            out["primary"] = [s.node(s.primary_port()).pid]
            out["replica"] = [s.node(s.replica_port()).pid]
            out["sentinels"] = [n.pid for n in s.sentinels if n.alive]
        if self.redis_cluster is not None:
            c = self.redis_cluster
            owners = dict(sorted(c.slot_map().items()))
            for i, port in enumerate(dict.fromkeys(owners.values()), 1):
                out[f"shard-{i}"] = [c.node(port).pid]
        return out

    def cpu_s(self) -> dict[str, float]:
        """role -> CPU seconds (user + system) of its processes so far."""
        return {role: procs.cpu_s(pids) for role, pids in self.processes().items()}

    def stop(self) -> None:
        sets: list[NodeSet | RedisSingle | None] = [
            *self.singles.values(), self.sentinel, self.redis_cluster,
        ]  # fmt: skip
        for s in sets:
            if s is not None:
                s.stop()


def start(topology: Topology, replicas: int = 0) -> Backplane:
    """Start what `topology` needs (nothing for SINGLE); `replicas`: per Redis Cluster shard
    (1 for a failover)."""
    bp = Backplane(topology)
    try:
        if topology is Topology.ONE:
            bp.singles["redis"] = start_single()
            bp.cluster = {"redis_url": bp.singles["redis"].url}
        elif topology is Topology.SPLIT:
            bp.singles = {"bus": start_single(), "state": start_single()}
            bp.cluster = {"bus_url": bp.singles["bus"].url, "state_url": bp.singles["state"].url}
        elif topology is Topology.SENTINEL:
            bp.sentinel = SentinelSet(down_after_ms=DOWN_AFTER_MS).start()
            bp.cluster = {"redis_url": bp.sentinel.url()}
        elif topology is Topology.CLUSTER:
            bp.redis_cluster = RedisClusterSet(
                primaries=SHARDS, replicas=replicas, node_timeout_ms=NODE_TIMEOUT_MS
            ).start()
            bp.cluster = {"redis_url": bp.redis_cluster.url()}
    except BaseException:
        bp.stop()
        raise
    return bp


def sections(bp: Backplane, **cluster: Any) -> dict[str, dict[str, Any]]:
    """The config sections of a node over `bp` ({} for a single node): [cluster] with its
    URLs and `cluster`'s other settings."""
    return {"cluster": {**bp.cluster, **cluster}} if bp.cluster else {}
