"""Clients for one Redis role (the bus, or the state): a single server or a Sentinel-managed
primary, and the primary's identity, checked on every new connection.

`PrimaryWatch` is told, on each new connection, the replication id (`master_replid`) of the
server it reached, and calls its `listeners` when it changed (the node heartbeats at once).
A server's replication id changes when it becomes a primary (a replica promoted by a
failover) and when it restarts without its data, so a new id means: the store may lack
writes this node made before (asynchronous replication loses the last ones). The scripts are
given the id as the *generation* they believe in: a node's registration and a channel
history's epoch are tied to the generation they were written under, so a node finds itself
unregistered (and resyncs) and a history starts a new epoch on a new primary, even when the
primary holds a replicated copy of the old records. A connection is checked
once, when it is made, so a script always runs on a server whose id was read on that same
connection or on one made after it (a failover breaks every connection to the old primary).

Client settings (both kinds):
- `health_check_interval=1`: a pooled connection idle for over a second is PINGed before use,
  so a connection left stale by a restart is found and replaced, not used.
- A blocking pool: past `POOL_SIZE` connections calls wait (up to 5 s) for a free one
  instead of failing ("Too many connections" in a reconnect storm).
- Sentinel: the pool asks the sentinels for the primary's address on every new connection;
  a READONLY reply (the old primary demoted) drops the connection, so the next one goes to
  the new primary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import AuthenticationError

from .urls import RedisKind, RedisTarget

log = logging.getLogger("pushwire.cluster.redis")

POOL_SIZE = 64  # connections per client; more calls at once wait their turn (up to 5 s)
SENTINEL_TIMEOUT = 1.0  # seconds for one sentinel to answer


# how Redis refuses a connection's credentials (a wrong password, or none given): redis-py
# raises AuthenticationError, but the Redis Cluster client passes on only the text
_REFUSALS = (
    "WRONGPASS",
    "NOAUTH",
    "invalid username-password pair",
    "invalid password",
    "Authentication required",
    "HELLO must be called with the client already authenticated",
    "no password is set",
)


def failure(exc: BaseException) -> str:
    """A Redis error as the logs say it: its text, marked as a refusal of this node's
    credentials when it is one (a retry cannot help: the URL's password is wrong or
    missing)."""
    text = str(exc)
    if isinstance(exc, AuthenticationError) or any(r in text for r in _REFUSALS):
        return f"Redis refused this node's credentials, check the password in the URL: {text}"
    return text


class PrimaryWatch:
    """The identity of the primary one role's connections reach (see the module doc)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.generation = ""  # the replication id of the primary; "" before the first contact
        self.address = ""  # host:port of the primary
        self.changes = 0  # times a new primary was found after the first (failovers, restarts)
        self.changed_at = 0.0  # monotonic time of the last change
        self.listeners: list[Callable[[], None]] = []  # called at each change

    def seen(self, replid: str, address: str) -> None:
        if not replid or replid == self.generation:
            self.address = address
            return
        changed = bool(self.generation)
        if changed:
            self.changes += 1
            self.changed_at = time.monotonic()
            log.warning(
                "redis %s: a new primary at %s (was %s): this node resyncs its records",
                self.role,
                address,
                self.address,
            )
        self.generation, self.address = replid, address
        if changed:
            for listener in self.listeners:
                listener()


class Replication(NamedTuple):
    """What a server's INFO replication says of it: its role ("master" / "slave"), its
    replication id, and its second id (a promoted replica's: the id of the primary it
    replaced)."""

    role: str
    replid: str
    replid2: str


def replication_ids(info: Any) -> Replication:
    """The `Replication` an INFO replication reply states ('' for what it leaves out)."""
    found = {"role": "", "master_replid": "", "master_replid2": ""}
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in found:
            found[name] = value.strip()
    return Replication(found["role"], found["master_replid"], found["master_replid2"])


def _watched(cls: type[AbstractConnection], watch: PrimaryWatch) -> type[AbstractConnection]:
    """`cls` that reads the server's replication id once, when it connects."""

    async def on_connect_check_health(self: Any, check_health: bool = True) -> None:
        await super(new, self).on_connect_check_health(check_health=check_health)
        await self.send_command("INFO", "replication", check_health=False)
        info = await self.read_response()
        address = f"{getattr(self, 'host', '')}:{getattr(self, 'port', '')}"
        watch.seen(replication_ids(info).replid, address)

    new: type[AbstractConnection] = type(
        f"Watched{cls.__name__}", (cls,), {"on_connect_check_health": on_connect_check_health}
    )
    return new


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection (see the module doc)."""


def make_client(target: RedisTarget, watch: PrimaryWatch, **kwargs: Any) -> Redis:
    """A client of `target`'s primary whose connections report to `watch`."""
    options: dict[str, Any] = dict(
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=1,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    if target.kind is RedisKind.SENTINEL:
        # the URL's credentials are the data nodes'; sentinels are asked without any
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.hosts,
            sentinel_kwargs={
                "socket_connect_timeout": SENTINEL_TIMEOUT,
                "socket_timeout": SENTINEL_TIMEOUT,
            },
        )
        options.update(db=target.db, ssl=target.tls)
        pool: Any = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            target.master,
            sentinel,
            max_connections=POOL_SIZE,
            timeout=5,
            is_master=True,
            check_connection=False,
            **options,
        )
    elif target.kind is RedisKind.SINGLE:
        pool = BlockingConnectionPool.from_url(
            target.url, max_connections=POOL_SIZE, timeout=5, **options
        )
    else:
        raise ValueError(f"{target.kind.value} targets have a backend of their own")
    pool.connection_class = _watched(pool.connection_class, watch)
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


def new_connection(client: Redis, **overrides: Any) -> AbstractConnection:
    """A connection of `client`'s kind, outside its pool (the bus's pub/sub listener):
    same server (for Sentinel: the primary the sentinels name when it connects), same
    watch, with `overrides` applied to its settings."""
    pool = client.connection_pool
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    kwargs.update(overrides)
    conn: AbstractConnection = pool.connection_class(**kwargs)
    return conn
