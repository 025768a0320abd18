"""`RedisClusterSet`: a Redis Cluster of redis-server processes (3 primaries + 3 replicas by
default, made by `redis-cli --cluster create`), for sharding, failover and migration tests.

- `owner_of(key)`: the port of the primary owning the key's (or sharded channel's) slot, as
  the cluster's nodes agree on it.
- `kill_primary_of(key)` SIGKILLs that primary; `wait_failover()` waits until every running
  node agrees on a slot map in which no slot is owned by a killed node, the new owners report
  role master and the cluster state is ok; `restart_killed()` starts the killed nodes again
  (their nodes.conf kept, their data not): each rejoins as a replica of its replacement.
- `migrate_slot(slot, port)` moves a slot and its keys to another primary the way
  `redis-cli --cluster reshard` does (SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE).

Each node has its cluster bus on a free port of its own (`--cluster-port`), not port + 10000.
With `password`, every node requires it (`--requirepass`, `--masterauth`: replicas and the
cluster tooling authenticate), `redis-cli --cluster create` and MIGRATE give it, and `url()`
carries it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers import TIMEOUT, free_port
from tests.helpers.redis_procs import (
    HOST,
    NodeSet,
    NotYet,
    RedisNode,
    credentials,
    executable,
    wait_for,
)

SLOTS = 16384
SlotMap = dict[tuple[int, int], int]  # (first slot, last slot) -> owner's port


class RedisClusterSet(NodeSet):
    def __init__(
        self,
        root: Path | None = None,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1500,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        super().__init__(root, password)
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args
        self.killed: list[RedisNode] = []
        self._failed_slots: list[int] = []  # the first slot of each range of a killed primary

    # ------------------------------------------------------------------------------ start
    def _start(self) -> None:
        for _ in range(self.primaries * (1 + self.replicas)):
            args = [
                "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                *self.extra_args,
            ]  # fmt: skip
            self.new_node("cluster", args).start()
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        create = [executable("redis-cli"), "--cluster", "create", *addresses]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password is not None:
            create += ["-a", self.password, "--no-auth-warning"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=6 * TIMEOUT)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_ok()

    # ---------------------------------------------------------------------------- queries
    def url(self, scheme: str = "redis+cluster") -> str:
        """`redis+cluster://[:PASSWORD@]127.0.0.1:P1,127.0.0.1:P2,...` (every node, as
        seeds)."""
        hosts = ",".join(f"{HOST}:{n.port}" for n in self.nodes)
        return f"{scheme}://{credentials(self.password)}{hosts}"

    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def _live(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.alive]

    def slot_map(self, port: int | None = None) -> SlotMap:
        """The slot ranges and their owners as the node on `port` (else any running node)
        sees them (CLUSTER SLOTS)."""
        port = port if port is not None else self._live()[0].port
        reply: list[Any] = self.command(port, "CLUSTER", "SLOTS")
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in reply}

    def primary_ports(self) -> list[int]:
        return sorted(set(self.slot_map().values()))

    def replica_ports(self) -> list[int]:
        primaries = set(self.primary_ports())
        return [n.port for n in self._live() if n.port not in primaries]

    def slot_of(self, key: str | bytes) -> int:
        """The key's (or sharded channel's) slot: CLUSTER KEYSLOT."""
        return int(self.command(self._live()[0].port, "CLUSTER", "KEYSLOT", key))

    def owner_of_slot(self, slot: int) -> int:
        return _owner(self.slot_map(), slot)

    def owner_of(self, key: str | bytes) -> int:
        """The port of the primary that owns the key's (or sharded channel's) slot."""
        return self.owner_of_slot(self.slot_of(key))

    def node_id(self, port: int) -> str:
        return str(self.command(port, "CLUSTER", "MYID"))

    # -------------------------------------------------------------------------- failover
    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (its slots, if a primary, are failed over)."""
        node = self.node(port)
        map_ = self.slot_map()
        node.kill()
        self.killed.append(node)
        self._failed_slots += [first for (first, _), owner in map_.items() if owner == port]

    def kill_primary_of(self, key: str | bytes) -> int:
        """SIGKILL the primary owning the key's slot; returns its port."""
        port = self.owner_of(key)
        self.kill(port)
        return port

    def wait_failover(self, timeout: float | None = None) -> int:
        """Wait until the slots of the killed primaries have new owners that every running
        node agrees on and the cluster is ok; returns the new owner of the (first) killed
        primary's slots."""
        assert self._failed_slots, "kill a primary first"
        self.wait_ok(timeout)
        return self.owner_of_slot(self._failed_slots[0])

    def restart_killed(self, timeout: float | None = None) -> list[int]:
        """Start the killed nodes again (empty, their cluster config kept) and wait until each
        is a replica in sync and the cluster is ok; returns their ports."""
        restarted, self.killed, self._failed_slots = self.killed, [], []
        for node in restarted:
            node.start()

        for node in restarted:
            wait_for(f"{node.port} a replica again", node.replica_in_sync, timeout or 3 * TIMEOUT)
        self.wait_ok(timeout)
        return [n.port for n in restarted]

    def agreed_map(self) -> SlotMap:
        """The slot map every running node reports, with cluster_state ok, all slots covered,
        each owner running and reporting role master, no running node flagged failing;
        else NotYet."""
        live = self._live()
        live_ports = {n.port for n in live}
        maps = []
        for node in live:
            state = self.command(node.port, "CLUSTER", "INFO").split("cluster_state:")[1][:2]
            if state != "ok":
                raise NotYet(f"{node.port}: cluster_state {state}")
            maps.append(self.slot_map(node.port))
            for line in self.command(node.port, "CLUSTER", "NODES").splitlines():
                _, address, flags = line.split()[:3]
                port = int(address.split("@")[0].rsplit(":", 1)[1])
                if port in live_ports and {"fail", "fail?"} & set(flags.split(",")):
                    raise NotYet(f"{node.port} sees {port} as {flags}")
        if any(m != maps[0] for m in maps):
            raise NotYet(f"the nodes disagree on the slot map: {maps}")
        slot_map = maps[0]
        if sum(last - first + 1 for first, last in slot_map) != SLOTS:
            raise NotYet(f"not all slots covered: {slot_map}")
        for owner in set(slot_map.values()):
            node = self.node(owner)
            if not node.alive or node.info()["role"] != "master":
                raise NotYet(f"owner {owner} is not a running primary")
        return slot_map

    def wait_ok(self, timeout: float | None = None) -> SlotMap:
        """Wait until `agreed_map()` holds; returns the map."""
        return wait_for("cluster ok and agreed", self.agreed_map, timeout or 3 * TIMEOUT)

    # ------------------------------------------------------------------------- migration
    def migrate_slot(self, slot: int, to_port: int, batch: int = 100, hold: float = 0.0) -> int:
        """Move `slot` and its keys to the primary on `to_port`: the target IMPORTING, the
        source MIGRATING, its keys MIGRATEd in batches (`hold` seconds in this state before
        the slot is handed over: clients get ASK meanwhile), then SETSLOT NODE on the target,
        the source and the other primaries; waits until every node agrees. Returns the port
        of the previous owner."""
        source = self.owner_of_slot(slot)
        if source == to_port:
            raise ValueError(f"slot {slot} is on {to_port} already")
        src_id, dst_id = self.node_id(source), self.node_id(to_port)
        self.command(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        self.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        deadline = time.monotonic() + hold
        while True:
            keys = self.command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if keys:
                auth = () if self.password is None else ("AUTH", self.password)
                self.command(
                    source, "MIGRATE", HOST, to_port, "", 0, 5000, *auth, "KEYS", *keys, timeout=10
                )
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.05)
        others = [p for p in self.primary_ports() if p not in (to_port, source)]
        for port in [to_port, source, *others]:  # the target first: the slot is never unowned
            self.command(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

        def moved() -> bool:
            slot_map = self.agreed_map()
            if _owner(slot_map, slot) != to_port:
                raise NotYet(f"the nodes agree on slot {slot} at {_owner(slot_map, slot)}")
            return True

        wait_for(f"slot {slot} moved to {to_port}", moved, 3 * TIMEOUT)
        return source


def _owner(slot_map: SlotMap, slot: int) -> int:
    for (first, last), port in slot_map.items():
        if first <= slot <= last:
            return port
    raise LookupError(f"slot {slot} is not covered")
