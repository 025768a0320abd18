"""Fixtures for the app store tests: a throwaway PostgreSQL server, a fresh database each."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.pg import Postgres, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    pg = start_postgres()
    yield pg
    pg.close()


@pytest.fixture
def pg_dsn(postgres_server: Postgres) -> Iterator[str]:
    """The DSN of a new, empty database on the shared server (dropped afterwards)."""
    import psycopg  # here: the tests of other stores need not have it
    from psycopg import sql

    postgres_server.start()  # a test that stopped it and failed may have left it down
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.dsn_for(name)
    postgres_server.start()
    with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
