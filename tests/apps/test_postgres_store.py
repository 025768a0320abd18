"""PostgresStore against a real PostgreSQL server (tests/pg.py): schema, writes, LISTEN/NOTIFY
between two stores ("nodes"), the periodic reload, and the database going away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from pushwire.apps.base import AppExists, AppMissing, StoreError, StoreUnavailable
from pushwire.apps.postgres import SCHEMA_VERSION, PostgresStore, migrate
from tests.conftest import TIMEOUT, free_port
from tests.pg import Postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

APP = {
    "id": "app-1",
    "key": "key-1",
    "secret": "secret-1",
    "max_connections": 10,
    "client_event_rate": 2.5,
    "allowed_origins": ["https://a.example.com"],
    "webhooks": [{"url": "https://hooks.example.com/x", "event_types": ["channel_occupied"]}],
}


class Changes:
    """An on_change callback that counts its calls and can be waited on."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> float:
        """Wait until there have been `count` calls; return how long that took."""
        t0 = time.monotonic()
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._event.clear()
                await self._event.wait()
        return time.monotonic() - t0


def app(n: int, **extra: object) -> dict[str, object]:
    return {"id": f"app-{n}", "key": f"key-{n}", "secret": f"secret-{n}", **extra}


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    await migrate(pg_dsn)
    s = PostgresStore(pg_dsn, reload_interval=300)
    yield s
    await s.stop()


async def test_migrate_is_idempotent(pg_dsn: str) -> None:
    assert await migrate(pg_dsn) == 0
    assert await migrate(pg_dsn) == SCHEMA_VERSION
    s = PostgresStore(pg_dsn)
    try:
        assert await s.migrate() == SCHEMA_VERSION
        assert await s.load() == []
    finally:
        await s.stop()
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT version FROM pushwire_schema")
        assert await cur.fetchall() == [(SCHEMA_VERSION,)]
        cur = await conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'pushwire_apps' ORDER BY ordinal_position"
        )
        assert await cur.fetchall() == [
            ("id", "text", "NO"),
            ("settings", "jsonb", "NO"),
            ("updated_at", "timestamp with time zone", "NO"),
        ]


async def test_concurrent_migrations(pg_dsn: str) -> None:
    """Nodes starting at once all migrate: one creates the tables, none fails."""
    found = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))
    assert sorted(found) == [0] + [SCHEMA_VERSION] * 3


async def test_load_before_migrate(pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    try:
        with pytest.raises(StoreUnavailable, match="apps migrate"):
            await s.load()
    finally:
        await s.stop()


async def test_create_load_update_delete(store: PostgresStore) -> None:
    assert store.kind == "postgres"
    assert await store.load() == []
    await store.create(APP)
    await store.create(app(2, enabled=False))
    assert await store.load() == [APP, app(2, enabled=False)]

    with pytest.raises(AppExists, match="app-1"):
        await store.create({**APP, "key": "other"})
    assert (await store.load())[0] == APP  # unchanged

    changed = {**APP, "secret": "new-secret", "webhooks": []}
    await store.update("app-1", changed)
    assert await store.load() == [changed, app(2, enabled=False)]

    # the id may be left out of an update; the row's id is the app's id
    await store.update("app-2", {"key": "key-2", "secret": "s"})
    assert (await store.load())[1] == {"id": "app-2", "key": "key-2", "secret": "s"}

    with pytest.raises(AppMissing, match="nope"):
        await store.update("nope", {**app(3), "id": "nope"})
    with pytest.raises(StoreError, match="cannot change"):
        await store.update("app-1", {**APP, "id": "app-9"})

    await store.delete("app-1")
    assert await store.load() == [{"id": "app-2", "key": "key-2", "secret": "s"}]
    with pytest.raises(AppMissing):
        await store.delete("app-1")
    await store.delete("app-2")
    assert await store.load() == []


async def test_settings_stored_as_given(store: PostgresStore, pg_dsn: str) -> None:
    weird = app(1, unknown_key={"nested": [1, 2.5, None, True]}, max_connections="ten")
    await store.create(weird)  # the registry validates rows, the store does not
    assert await store.load() == [weird]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT id, settings, updated_at FROM pushwire_apps")
        rows = await cur.fetchall()
    assert [(r[0], r[1]) for r in rows] == [("app-1", weird)]
    assert rows[0][2] is not None


async def test_bad_settings_refused(store: PostgresStore) -> None:
    with pytest.raises(StoreError, match="'id'"):
        await store.create({"key": "k", "secret": "s"})
    with pytest.raises(StoreError, match="JSON"):
        await store.create(app(1, client_event_rate=float("nan")))
    with pytest.raises(StoreError, match="JSON"):
        await store.create(app(1, x=object()))
    with pytest.raises(StoreError):  # jsonb has no \u0000
        await store.create(app(1, secret="a\x00b"))
    assert await store.load() == []


async def test_change_reaches_other_node_quickly(pg_dsn: str) -> None:
    """A write through one store makes another store's on_change fire within 1 s."""
    await migrate(pg_dsn)
    a = PostgresStore(pg_dsn, reload_interval=300)
    b = PostgresStore(pg_dsn, reload_interval=300)
    a_changes, b_changes = Changes(), Changes()
    try:
        await a.start(a_changes)
        await b.start(b_changes)
        # each fires once when its LISTEN is up
        await a_changes.wait_for(1)
        await b_changes.wait_for(1)
        delays = []
        for i in range(20):
            write = (
                a.create(app(i))
                if i % 3 == 0
                else a.update(f"app-{i - i % 3}", app(i - i % 3, rev=i))
                if i % 3 == 1
                else a.delete(f"app-{i - 2}")
            )
            t0 = time.monotonic()
            await write
            await b_changes.wait_for(2 + i, timeout=2.0)
            delays.append(time.monotonic() - t0)
        assert max(delays) < 1.0, delays
        # and the writer's own node hears it too
        await a_changes.wait_for(21, timeout=2.0)
        await asyncio.sleep(0.2)
        assert b_changes.count == 21  # one call per write, nothing else
        assert [s["id"] for s in await b.load()] == ["app-18"]
        print(f"notify delays: max {max(delays) * 1000:.1f} ms, "
              f"mean {sum(delays) / len(delays) * 1000:.1f} ms")  # fmt: skip
    finally:
        await a.stop()
        await b.stop()


async def test_failed_write_does_not_notify(store: PostgresStore) -> None:
    changes = Changes()
    await store.create(app(1))
    await store.start(changes)
    await changes.wait_for(1)
    with pytest.raises(AppExists):
        await store.create(app(1))
    with pytest.raises(AppMissing):
        await store.delete("app-2")
    await store.delete("app-1")
    await changes.wait_for(2, timeout=2.0)
    await asyncio.sleep(0.3)
    assert changes.count == 2


async def test_periodic_reload(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    s = PostgresStore(pg_dsn, reload_interval=0.2)
    changes = Changes()
    try:
        await s.start(changes)
        await changes.wait_for(1)  # LISTEN is up
        t0 = time.monotonic()
        await changes.wait_for(6, timeout=3.0)
        elapsed = time.monotonic() - t0
        assert 0.8 < elapsed < 1.6, elapsed  # 5 reloads, every 0.2 s
    finally:
        await s.stop()


async def test_on_change_error_does_not_stop_listening(store: PostgresStore) -> None:
    calls = Changes()

    def flaky() -> None:
        calls()
        raise RuntimeError("registry bug")

    await store.start(flaky)
    await calls.wait_for(1)
    await store.create(app(1))
    await calls.wait_for(2, timeout=2.0)


async def test_stop_is_prompt(store: PostgresStore) -> None:
    changes = Changes()
    await store.start(changes)
    await changes.wait_for(1)
    await store.load()
    t0 = time.monotonic()
    await store.stop()
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(StoreUnavailable, match="stopped"):
        await store.load()
    await store.stop()  # twice is fine


async def test_database_goes_away_and_comes_back(
    postgres_server: Postgres, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(pg_dsn)
    s = PostgresStore(pg_dsn, reload_interval=300)
    changes = Changes()
    caplog.set_level(logging.INFO, logger="pushwire.apps")
    try:
        await s.start(changes)
        await changes.wait_for(1)
        await s.create(app(1))
        await changes.wait_for(2, timeout=2.0)
        assert len(await s.load()) == 1

        await asyncio.to_thread(postgres_server.stop)  # the loop (the listener) runs meanwhile
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable") as info:
            await s.load()
        load_time = time.monotonic() - t0
        assert load_time < 5.0, load_time
        assert "\n" not in str(info.value)
        assert not isinstance(info.value.__cause__, psycopg.Error)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.create(app(2))
        assert time.monotonic() - t0 < 5.0

        # the listener noticed, logged once, and keeps trying (0.2, 0.4, 0.8, 1.6, 3.2 s apart)
        assert s._listen_failures >= 5, s._listen_failures
        warnings = [
            r for r in caplog.records if r.name == "pushwire.apps" and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        # the pool's one warning per connection attempt is not logged (the store's error
        # gives the reason instead)
        assert not [r for r in caplog.records if r.name.startswith("psycopg")]
        assert "refused" in str(info.value) or "closed" in str(info.value), info.value
        assert changes.count == 2

        t0 = time.monotonic()
        await asyncio.to_thread(postgres_server.start)
        await changes.wait_for(3, timeout=TIMEOUT)  # backoff is at most 5 s
        back = time.monotonic() - t0
        t0 = time.monotonic()
        assert len(await s.load()) == 1
        reload_time = time.monotonic() - t0
        assert reload_time < 3.0, reload_time
        await s.create(app(2))
        await changes.wait_for(4, timeout=2.0)
        assert [a["id"] for a in await s.load()] == ["app-1", "app-2"]
        assert any("again" in r.getMessage() for r in caplog.records)
        print(
            f"outage: load failed in {load_time:.2f} s, on_change {back:.2f} s after restart, "
            f"first load after it {reload_time:.2f} s"
        )

        # stop is prompt while the database is down too
        await asyncio.to_thread(postgres_server.stop)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await s.stop()
        assert time.monotonic() - t0 < 1.0
    finally:
        await s.stop()
        postgres_server.start()


async def test_unreachable_from_the_start(caplog: pytest.LogCaptureFixture) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    s = PostgresStore(dsn, reload_interval=300)
    changes = Changes()
    caplog.set_level(logging.INFO, logger="pushwire.apps")
    try:
        await s.start(changes)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable") as info:
            await s.load()
        assert time.monotonic() - t0 < 5.0
        assert "nothing" in str(info.value) and "@" not in str(info.value)
        assert "Connection refused" in str(info.value)
        with pytest.raises(StoreUnavailable):
            await migrate(dsn)
        warnings = [r for r in caplog.records if r.name == "pushwire.apps"]
        assert len(warnings) == 1
        assert not [r for r in caplog.records if r.name.startswith("psycopg")]
        assert changes.count == 0
        t0 = time.monotonic()
        await s.stop()
        assert time.monotonic() - t0 < 1.0
    finally:
        await s.stop()


def test_bad_dsn() -> None:
    with pytest.raises(StoreError, match="invalid PostgreSQL DSN") as info:
        PostgresStore("host=x password=hunter2 nonsense")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="reload_interval"):
        PostgresStore("host=x", reload_interval=0)
