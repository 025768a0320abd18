"""The app store a config names: the one place that picks one (the server and the
`pushwire apps` command both ask here)."""

from __future__ import annotations

from ..config import Config
from .base import AppStore
from .toml import TomlStore


def make_app_store(config: Config) -> AppStore:
    c = config.apps_store
    if c.kind == "postgres":
        from .postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(c.dsn, c.reload_interval)
    return TomlStore(config, None if config.source == "<defaults>" else config.source)
