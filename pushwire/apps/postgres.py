"""Apps in PostgreSQL: the `PostgresStore`.

One row per app in `pushwire_apps` (its settings as JSONB, the same keys as a TOML `[[apps]]`
table), and the schema version in `pushwire_schema`. Every write runs in one transaction that
also sends `NOTIFY pushwire_apps, '<app id>'`, so each node's LISTEN connection hears about it
once it is committed; a full reload every `reload_interval` seconds covers anything missed.

Loads and writes use a small connection pool; the listener holds one connection of its own
and comes back by itself (0.2 s doubling to 5 s between attempts) when the database does.
Every call is bounded in time, and connection problems surface as `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pushwire.aio import cancel_and_wait
from pushwire.apps.base import AppExists, AppMissing, Settings, StoreError, StoreUnavailable

log = logging.getLogger("pushwire.apps")
_pool_log = logging.getLogger("psycopg.pool")
_pool_numbers = itertools.count(1)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

CHANNEL = "pushwire_apps"
CONNECT_TIMEOUT = 3  # seconds (libpq connect_timeout: whole seconds)
POOL_TIMEOUT = 3.0  # seconds to get a connection from the pool
CALL_TIMEOUT = 8.0  # seconds for a whole load or write, connection included
MIGRATE_TIMEOUT = 30.0  # seconds for a migration (it may wait for another node's)
STOP_TIMEOUT = 3.0  # seconds to close the pool on stop()
BACKOFF_MIN = 0.2  # seconds between LISTEN reconnection attempts: doubling ...
BACKOFF_MAX = 5.0  # ... up to this
# Any number, the same on every node: migrations take this advisory lock so two nodes
# starting at once do not both create the tables.
MIGRATION_LOCK = 0x70757368  # "push"

# Connection settings used unless the DSN gives its own.
DEFAULT_PARAMS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "application_name": "pushwire",
    # a dead peer (no RST) is noticed in about a minute instead of the OS's two hours
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

# Schema versions: each entry's statements take the schema from the previous version to its
# version. Never edit a released entry; append a new one.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """
            CREATE TABLE IF NOT EXISTS pushwire_apps (
                id text PRIMARY KEY,
                settings jsonb NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ),
    ),
    (
        2,
        (
            # an app's key is unique across apps, even under concurrent admin writes
            "CREATE UNIQUE INDEX IF NOT EXISTS pushwire_apps_key "
            "ON pushwire_apps ((settings->>'key'))",
        ),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# What a lost or unreachable server looks like (PoolTimeout is an OperationalError).
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)


def _params(dsn: str) -> dict[str, Any]:
    """The DSN's settings (checked), for naming the server in messages."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error:
        # the parser's message may quote part of the DSN (a password): leave it out
        raise StoreError(
            "invalid PostgreSQL DSN for the app store (expected e.g. "
            "'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...')"
        ) from None


def _where(params: dict[str, Any]) -> str:
    """host:port/dbname, without the user or password."""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    db = str(params.get("dbname") or params.get("user") or "(default database)")
    return f"{host}:{port}/{db}"


def _connect_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in DEFAULT_PARAMS.items() if k not in params}


def _reason(exc: BaseException) -> str:
    """The first line of an error's message (psycopg's may have several)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class _PoolLogFilter(logging.Filter):
    """psycopg_pool logs a warning for each failed connection attempt (several a second in an
    outage); the listener already logs an outage once. Keep the error for the store's
    messages instead of logging the pool's records (those naming this store's pool)."""

    def __init__(self, pool_name: str, on_error: Callable[[str], None]) -> None:
        super().__init__()
        self.pool_name = pool_name
        self.on_error = on_error

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and args and args[0] == self.pool_name):
            return True
        if len(args) > 1 and isinstance(args[1], BaseException):
            self.on_error(_reason(args[1]))
        return False


def _dumps(settings: Settings) -> str:
    try:
        return json.dumps(settings, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"app settings cannot be stored as JSON: {exc}") from None


def _app_id(settings: Settings) -> str:
    app_id = settings.get("id")
    if not isinstance(app_id, str) or not app_id:
        raise StoreError("app settings need an 'id' (a non-empty string)")
    return app_id


async def _migrate(conn: Conn) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS pushwire_schema (version int NOT NULL)")
        cur = await conn.execute("SELECT max(version) FROM pushwire_schema")
        row = await cur.fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the app store's schema is version {found}, newer than this pushwire "
                f"knows ({SCHEMA_VERSION}): upgrade pushwire"
            )
        for version, statements in MIGRATIONS:
            if version > found:
                for sql in statements:
                    await conn.execute(sql)
        if found < SCHEMA_VERSION:
            await conn.execute("DELETE FROM pushwire_schema")
            await conn.execute(
                "INSERT INTO pushwire_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
    return found


async def migrate(dsn: str) -> int:
    """Create or upgrade the store's tables (idempotent, safe to run from several nodes at
    once). Returns the schema version found before (0: none). Raises `StoreUnavailable`
    when the database cannot be reached, `StoreError` for an invalid DSN or a schema newer
    than this code."""
    params = _params(dsn)
    where = _where(params)
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, **_connect_kwargs(params)
            )
            try:
                return await _migrate(conn)
            finally:
                await conn.close()
    except StoreError:
        raise
    except (*_CONNECTION_ERRORS, psycopg.Error) as exc:
        raise StoreUnavailable(
            f"cannot migrate the PostgreSQL app store at {where}: {_reason(exc)}"
        ) from None


class PostgresStore:
    """The apps of every node, in one PostgreSQL database (see the module docstring)."""

    kind = "postgres"

    def __init__(self, dsn: str, reload_interval: float = 30.0) -> None:
        if reload_interval <= 0:
            raise ValueError("reload_interval must be > 0")
        params = _params(dsn)
        self._dsn = dsn
        self._where = _where(params)
        self._kwargs = _connect_kwargs(params)
        self.reload_interval = reload_interval
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._pool_lock = asyncio.Lock()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._on_change: Callable[[], None] | None = None
        self._next_reload = 0.0
        self._listening = False  # the LISTEN connection is up
        self._listen_failures = 0  # failed LISTEN connection attempts, for tests and debugging
        self._last_error = ""  # the last connection error, for messages
        self._pool_name = f"pushwire-apps-{next(_pool_numbers)}"
        self._pool_log_filter = _PoolLogFilter(self._pool_name, self._pool_error)

    def _pool_error(self, reason: str) -> None:
        self._last_error = reason

    # -- loads and writes -------------------------------------------------------------------

    async def _get_pool(self) -> AsyncConnectionPool[Conn]:
        if self._stopped:
            raise StoreUnavailable(f"the PostgreSQL app store at {self._where} is stopped")
        async with self._pool_lock:
            if self._pool is None:
                pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                    self._dsn,
                    kwargs={"autocommit": True, **self._kwargs},
                    min_size=1,
                    max_size=4,
                    open=False,
                    timeout=POOL_TIMEOUT,
                    # a connection the server dropped is replaced before use, not failed on
                    check=AsyncConnectionPool.check_connection,
                    # give up on a failing reconnection soon: the next call starts a fresh
                    # one at once, instead of waiting out a long backoff after an outage
                    reconnect_timeout=2.0,
                    name=self._pool_name,
                )
                _pool_log.addFilter(self._pool_log_filter)
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = _reason(exc)
        if isinstance(exc, PoolTimeout):
            reason = f"no connection within {POOL_TIMEOUT:g} s"
            if self._last_error:
                reason += f" (last error: {self._last_error})"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {CALL_TIMEOUT:g} s"
        return StoreUnavailable(f"PostgreSQL app store at {self._where} unavailable: {reason}")

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection (autocommit), bounded in time, with psycopg's
        errors turned into the store's."""
        pool = await self._get_pool()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                async with pool.connection(timeout=POOL_TIMEOUT) as conn:
                    return await fn(conn)
        except StoreError:
            raise
        except pg_errors.UniqueViolation:
            raise AppExists("another app has this key already") from None
        except pg_errors.UndefinedTable:
            raise StoreUnavailable(
                f"PostgreSQL app store at {self._where} has no {CHANNEL} table: "
                "run `pushwire apps migrate --config ...` first"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            # the server refused the statement (bad data, permissions...)
            raise StoreError(
                f"PostgreSQL app store at {self._where} refused: {_reason(exc)}"
            ) from None

    async def migrate(self) -> int:
        """Create or upgrade the tables; see the module function `migrate`."""
        return await migrate(self._dsn)

    async def load(self) -> list[Settings]:
        async def read(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(f"SELECT id, settings FROM {CHANNEL} ORDER BY id")
            return await cur.fetchall()

        try:
            rows = await self._run(read)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from None
        apps: list[Settings] = []
        for app_id, settings in rows:
            if not isinstance(settings, dict):
                log.warning(
                    "app store: app %r skipped: its settings are JSON %s, not an object",
                    app_id,
                    type(settings).__name__,
                )
                continue
            apps.append({**settings, "id": app_id})  # the row's id is the app's id
        return apps

    async def create(self, settings: Settings) -> None:
        app_id = _app_id(settings)
        doc = _dumps(settings)

        async def write(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(
                    f"INSERT INTO {CHANNEL} (id, settings) VALUES (%s, %s::jsonb) "
                    "ON CONFLICT (id) DO NOTHING",
                    (app_id, doc),
                )
                if cur.rowcount != 1:
                    raise AppExists(f"app {app_id!r} already exists")
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, app_id))

        await self._run(write)

    async def update(self, app_id: str, settings: Settings) -> None:
        """Replace the app's settings (the whole table; `id` cannot change)."""
        if "id" in settings and settings["id"] != app_id:
            raise StoreError(f"an app's id cannot change ({app_id!r} to {settings['id']!r})")
        doc = _dumps(settings)

        async def write(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(
                    f"UPDATE {CHANNEL} SET settings = %s::jsonb, updated_at = now() WHERE id = %s",
                    (doc, app_id),
                )
                if cur.rowcount != 1:
                    raise AppMissing(f"no app {app_id!r}")
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, app_id))

        await self._run(write)

    async def delete(self, app_id: str) -> None:
        async def write(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(f"DELETE FROM {CHANNEL} WHERE id = %s", (app_id,))
                if cur.rowcount != 1:
                    raise AppMissing(f"no app {app_id!r}")
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, app_id))

        await self._run(write)

    # -- change notifications ---------------------------------------------------------------

    async def start(self, on_change: Callable[[], None]) -> None:
        """Listen for changes in the background. `on_change` is called for each change, every
        `reload_interval` seconds, and each time the LISTEN connection is (re-)established,
        the first time included (so a change between a `load` and `start` is not missed)."""
        if self._task is not None:
            raise RuntimeError("PostgresStore.start() called twice")
        if self._stopped:
            raise RuntimeError("PostgresStore.start() after stop()")
        self._on_change = on_change
        self._next_reload = asyncio.get_running_loop().time() + self.reload_interval
        self._task = asyncio.create_task(self._listen(), name="pushwire-apps-listen")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT + 1.0):
                    await pool.close(timeout=STOP_TIMEOUT)
            except TimeoutError:
                log.warning("app store: the PostgreSQL pool did not close in time")
            finally:
                _pool_log.removeFilter(self._pool_log_filter)

    def _fire(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("app store: on_change failed")

    def _tick(self) -> None:
        """The periodic full reload, when due."""
        now = asyncio.get_running_loop().time()
        if now >= self._next_reload:
            self._next_reload = now + self.reload_interval
            self._fire()

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, keeping the periodic reload going meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(left, max(0.0, self._next_reload - loop.time())))
            self._tick()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN
        down = False  # logged as down, not logged as back yet
        while True:
            up_since: float | None = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT + 2.0):
                    conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True, **self._kwargs
                    )
            except Exception as exc:  # unreachable, refused, bad credentials...
                self._listen_failures += 1
                self._last_error = _reason(exc)
                if not down:
                    down = True
                    log.warning(
                        "app store: cannot listen for app changes on %s (%s); retrying",
                        self._where,
                        self._last_error,
                    )
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await conn.execute(f"LISTEN {CHANNEL}")
                self._listening = True
                up_since = loop.time()
                self._last_error = ""
                if down:
                    down = False
                    log.info("app store: listening for app changes on %s again", self._where)
                self._fire()  # changes may have been missed while not listening
                await self._serve(conn)
            except Exception as exc:  # lost, or LISTEN refused
                self._listen_failures += 1
                self._last_error = _reason(exc)
                if not down:
                    down = True
                    log.warning(
                        "app store: lost the connection listening for app changes on %s (%s); "
                        "reconnecting",
                        self._where,
                        self._last_error,
                    )
            finally:
                self._listening = False
                # not `async with conn`: its rollback would log a warning on a dead connection
                await conn.close()
            if up_since is not None and loop.time() - up_since >= BACKOFF_MAX:
                delay = BACKOFF_MIN  # it was up a while: try again soon (a flapping one: not)
            await self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _serve(self, conn: Conn) -> None:
        """Call on_change for each notification and every reload_interval, until the
        connection breaks (raises)."""
        loop = asyncio.get_running_loop()
        while True:
            wait = max(0.0, self._next_reload - loop.time())
            async with contextlib.aclosing(conn.notifies(timeout=wait)) as notifies:
                async for _ in notifies:
                    self._fire()
            if loop.time() >= self._next_reload:
                # also proves the connection alive: notifies() alone would wait forever on
                # a peer that vanished without closing the connection
                async with asyncio.timeout(CALL_TIMEOUT):
                    await conn.execute("SELECT 1")
                self._tick()
