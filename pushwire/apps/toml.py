"""The default app store: the `[[apps]]` tables of the config file, read again on SIGHUP.

Only the apps are read again (the other sections need a restart). Each table is checked on
its own, so a broken app is refused with one log line and the others are served; a file that
is not valid TOML any more leaves every app as it was. Read-only: change the file and send
SIGHUP (to every node); the admin API answers 409.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable

from ..config import Config
from .base import ReadOnlyStore, Settings, StoreUnavailable
from .model import app_settings

READ_ONLY = "apps come from the config file (read-only here): edit it and send SIGHUP"


class TomlStore:
    kind = "toml"

    def __init__(self, config: Config, path: str | None = None) -> None:
        self._path = path
        # apps that do not come from the file (PUSHWIRE_APP_*, the demo app) stay as they are
        in_file = {str(a.get("id")) for a in self._tables()} if path else set()
        self._demo = [app_settings(a) for a in config.apps] if config.demo_credentials else []
        self._fixed = [
            app_settings(a)
            for a in config.apps
            if a.id not in in_file and not config.demo_credentials
        ]

    async def load(self) -> list[Settings]:
        if not self._path:
            return list(self._fixed or self._demo)
        tables = self._tables()
        if not tables and not self._fixed:  # the demo app, until the file has apps
            return list(self._demo)
        ids = {str(t.get("id")) for t in tables}
        return [*(a for a in self._fixed if a["id"] not in ids), *tables]

    def _tables(self) -> list[Settings]:
        assert self._path is not None
        try:
            with open(self._path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise StoreUnavailable(f"{self._path}: {exc}") from None
        apps = data.get("apps", [])
        if not isinstance(apps, list):
            raise StoreUnavailable(f"{self._path}: 'apps' must be an array of tables ([[apps]])")
        return [a if isinstance(a, dict) else {"id": "?", "invalid": a} for a in apps]

    async def start(self, on_change: Callable[[], None]) -> None:
        return None  # SIGHUP calls the registry directly

    async def stop(self) -> None:
        return None

    async def create(self, settings: Settings) -> None:
        raise ReadOnlyStore(READ_ONLY)

    async def update(self, app_id: str, settings: Settings) -> None:
        raise ReadOnlyStore(READ_ONLY)

    async def delete(self, app_id: str) -> None:
        raise ReadOnlyStore(READ_ONLY)
