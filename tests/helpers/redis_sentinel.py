"""`SentinelSet`: a primary, a replica and three sentinels (`redis-server --sentinel`) watching
them as one master (quorum 2), for failover tests. With `password`, the data nodes require it
(`--requirepass`, `--masterauth`), the sentinels are told it (`sentinel auth-pass`) but take
none themselves, and `url()` carries it: the data nodes', as Pushwire's URL means it.

`kill_primary()` SIGKILLs the primary; `wait_failover()` waits until the sentinels agree on the
promoted replica, it reports role master and that has held for a while;
`restart_old_as_replica()` starts the killed node again as a replica of the new primary and
waits until the set is settled again (replica in sync, every sentinel seeing it and the two
other sentinels), so that the next failover can happen.

Two Sentinel behaviours the waits allow for:
- A sentinel refuses to fail the same master over again within 2 x failover-timeout of the
  previous attempt's start: a kill sooner than that is failed over late, not never.
- With down-after-milliseconds 1000, a sentinel sometimes flags the primary it has just
  switched to as down about a second after +switch-master (it reconnects at most once a second
  and counts the pending PING from the switch; redis/redis#8607). With a replica up at that
  moment it fails over again. `wait_failover` therefore waits until the new primary has been
  agreed on, up, for down-after + 1 s, before the old primary may come back as a replica; and
  the set always follows the primary the sentinels agree on, not the one it expects.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from tests.helpers import TIMEOUT
from tests.helpers.redis_procs import HOST, NodeSet, NotYet, RedisNode, credentials, wait_for


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A Redis reply of alternating names and values as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class SentinelSet(NodeSet):
    def __init__(
        self,
        root: Path | None = None,
        master: str = "pw",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        super().__init__(root, password)
        self.master = master
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data: list[RedisNode] = []  # the primary and the replica (roles change)
        self.sentinels: list[RedisNode] = []
        self._primary: RedisNode | None = None
        self._killed: RedisNode | None = None

    # ------------------------------------------------------------------------------ start
    def _start(self) -> None:
        primary = self.new_node("data").start()
        replica = self.new_node("data").start("--replicaof", HOST, str(primary.port))
        self.data = [primary, replica]
        self._primary = primary
        # the replica in sync before the sentinels start: their first INFO of the primary
        # lists it (otherwise they learn of it only at the next INFO, 10 s later)
        self._wait_replicated()
        for _ in range(3):
            self.sentinels.append(self.new_node("sentinel", sentinel=self._sentinel_conf()))
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_settled()

    def _sentinel_conf(self) -> str:
        m = self.master
        return (
            f"sentinel monitor {m} {HOST} {self.primary_port()} 2\n"
            f"sentinel down-after-milliseconds {m} {self.down_after_ms}\n"
            f"sentinel failover-timeout {m} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {m} 1\n"
            + ("" if self.password is None else f'sentinel auth-pass {m} "{self.password}"\n')
        )

    # ---------------------------------------------------------------------------- queries
    def url(self, db: int | None = None, scheme: str = "redis+sentinel") -> str:
        """`redis+sentinel://[:PASSWORD@]127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/pw[/db]`."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        auth = credentials(self.password)
        return f"{scheme}://{auth}{hosts}/{self.master}" + ("" if db is None else f"/{db}")

    def sentinel_ports(self) -> list[int]:
        return [s.port for s in self.sentinels]

    def primary_port(self) -> int:
        """The primary's port as last agreed by the sentinels (and seen by this set)."""
        assert self._primary is not None
        return self._primary.port

    def replica_port(self) -> int:
        return self._other(self._primary_node()).port

    def sentinel_views(self) -> list[int | None]:
        """The primary's port as each running sentinel names it (None: it did not answer)."""
        views: list[int | None] = []
        for s in self.sentinels:
            if not s.alive:
                continue
            try:
                _, port = s.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
                views.append(int(port))
            except (redis.RedisError, OSError, TypeError, ValueError):
                views.append(None)
        return views

    def _primary_node(self) -> RedisNode:
        assert self._primary is not None
        return self._primary

    def _other(self, node: RedisNode) -> RedisNode:
        return self.data[1 - self.data.index(node)]

    def _agreed_primary(self) -> RedisNode:
        """The data node every sentinel names as the primary, up and calm in their eyes
        (flags just `master`) and reporting role master itself; else NotYet."""
        views = self.sentinel_views()
        if len(set(views)) != 1 or views[0] is None:
            raise NotYet(f"the sentinels name {views}")
        node = self.node(views[0])
        if not node.alive or node.info()["role"] != "master":
            raise NotYet(f"{node} named by the sentinels is not a running master")
        for s in self.sentinels:
            flags = _pairs(s.command("SENTINEL", "MASTER", self.master))["flags"]
            if flags != "master":
                raise NotYet(f"sentinel {s.port} sees the master {node.port} as {flags}")
        return node

    # -------------------------------------------------------------------------- failover
    def kill_primary(self) -> int:
        """SIGKILL the primary (after waiting until the set is settled, so that the
        sentinels can fail it over); returns its port."""
        assert self._killed is None, "restart_old_as_replica() the previously killed primary"
        self.wait_settled()
        self._killed = self._primary_node()
        self._killed.kill()
        return self._killed.port

    def wait_failover(self, timeout: float | None = None) -> int:
        """Wait until every running sentinel names the other data node as the primary, it
        reports role master, and that has held for down-after + 1 s; returns its port."""
        killed = self._killed
        assert killed is not None, "kill_primary() first"
        window = self.down_after_ms / 1000 + 1.0
        limit = timeout or 3 * TIMEOUT + 2 * self.failover_timeout_ms / 1000 + window
        agreed: list[tuple[RedisNode, float]] = []  # (node, since when), the last seen

        def stable() -> int:
            try:
                node = self._agreed_primary()
                if node is killed:
                    raise NotYet(f"the sentinels still name the killed {node.port}")
            except BaseException:
                agreed.clear()
                raise
            if not agreed or agreed[0][0] is not node:
                agreed[:] = [(node, time.monotonic())]
            if time.monotonic() - agreed[0][1] < window:
                raise NotYet(f"{node.port} agreed on for less than {window} s")
            return node.port

        port = wait_for(f"failover from {killed.port}", stable, limit)
        self._primary = self.node(port)
        return port

    def restart_old_as_replica(self, timeout: float | None = None) -> int:
        """Start the killed node again (empty) as a replica of the new primary, waiting for
        the failover first if need be; then wait until the set is settled. Returns its port."""
        killed = self._killed
        assert killed is not None, "kill_primary() first"
        if self._primary is killed:
            self.wait_failover(timeout)
        killed.start("--replicaof", HOST, str(self.primary_port()))
        self._killed = None
        self.wait_settled(timeout)
        return killed.port

    # ----------------------------------------------------------------------------- waits
    def _wait_replicated(self, timeout: float | None = None) -> None:
        def in_sync() -> bool:
            primary = self._primary_node()
            self._other(primary).replica_in_sync()
            if primary.info()["connected_slaves"] != 1:
                raise NotYet(f"primary {primary.port}: replica not connected")
            return True

        wait_for("replica in sync", in_sync, timeout or 2 * TIMEOUT)

    def wait_settled(self, timeout: float | None = None) -> None:
        """Wait until the sentinels agree on a running primary (following them if it is not
        the one this set expected), the other data node is its replica, in sync, and every
        sentinel sees that replica up and knows the two other sentinels: the state in which
        a failover can happen."""
        assert self._killed is None, "a data node is down: restart_old_as_replica() first"

        def settled() -> bool:
            self._primary = self._agreed_primary()
            replica = self._other(self._primary).port
            for s in self.sentinels:
                replicas = [_pairs(r) for r in s.command("SENTINEL", "REPLICAS", self.master)]
                up = [r for r in replicas if r["flags"] == "slave" and int(r["port"]) == replica]
                if not up or up[0]["master-link-status"] != "ok":
                    raise NotYet(f"sentinel {s.port}: replicas {replicas}")
                others = s.command("SENTINEL", "SENTINELS", self.master)
                if len(others) != 2:
                    raise NotYet(f"sentinel {s.port}: {len(others)} other sentinels")
            self._wait_replicated(timeout)
            return True

        wait_for("sentinels settled", settled, timeout or 3 * TIMEOUT)
