"""This node's standing in a Redis Cluster deployment, as the node itself knows it.

On one Redis server every script checks the registry and the leases itself. On a cluster
the registry is one slot among many, and a script touches one slot, so the checks are split:

- *Registration*, locally: `Membership.registered` is what the registry said at this node's
  last `register`, `beat` or `deregister`. Every state script, read or write, and every
  publish is refused locally (NotRegistered) while it is False. A node learns that it was
  reaped at its next heartbeat at the latest.
- *Registration*, per group (a channel, a user, an app): each write carries this node's
  *incarnation* (a fresh, increasing id taken at each `resync` and `register`). The group
  records which incarnation owns this node's records in it (`own`), and a reaper marks it
  when it removes them (`~I`). A write of a reaped incarnation, or one older than the owner
  (a write from before a resync, arriving after it), is refused with NOTREG: in every group,
  a reaped node's late writes are refused, exactly as one server refuses them.
- *Where the node's records are*: the node's index (`index.py`), so that a reaper finds
  every group without scanning the cluster.
- *Leases of the others*: a publish refuses (EXPIRED) to count on a node that was dead at
  this node's last heartbeat (one slot cannot read the registry's leases).
- *A new primary* (a shard failed over, or a primary came back without its data): found by
  `ShardWatch` (`client.py`); the node is then `stale` until its next resync begins: it
  answers as not registered, so its heartbeat resyncs all its records and registers again.
"""

from __future__ import annotations

import secrets
import time


class Membership:
    def __init__(self, node: str) -> None:
        self.node = node
        self.incarnation = ""
        self.registered = False  # as of the last register / beat / deregister / reap
        self.primaries_changed = 0  # shards found with a new primary (ShardWatch)
        self.synced = 0  # ... of them, those found before the last resync began
        self.dead: tuple[str, ...] = ()  # dead at the last heartbeat
        self._last = 0
        self.renew()

    def renew(self) -> str:
        """A new incarnation: increasing for this node id (the clock, and past the last),
        fixed width so that Lua compares them as strings."""
        self._last = max(self._last + 1, time.time_ns())
        self.incarnation = f"{self._last:016x}{secrets.token_hex(2)}"
        return self.incarnation

    @property
    def stale(self) -> bool:
        """A shard's primary changed since the last resync began: resync."""
        return self.primaries_changed != self.synced

    @property
    def valid(self) -> bool:
        """Registered, with every shard's primary the one the records were written on."""
        return self.registered and not self.stale

    def me(self) -> str:
        """ARGV[2] of every script: node, incarnation, then the nodes dead at the last
        heartbeat, one per line."""
        return "\n".join((self.node, self.incarnation, *self.dead))
