"""A writable app store in memory: a test double for the registry and the admin API logic
(the server's stores are TOML and PostgreSQL, `pushwire.apps.toml` / `.postgres`)."""

from __future__ import annotations

import copy
from collections.abc import Callable

from pushwire.apps.base import AppExists, AppMissing, Settings


class MemoryAppStore:
    kind = "memory"

    def __init__(self, apps: list[Settings] | None = None) -> None:
        self.apps: dict[str, Settings] = {a["id"]: copy.deepcopy(a) for a in apps or []}
        self._on_change: Callable[[], None] | None = None

    async def load(self) -> list[Settings]:
        return [copy.deepcopy(a) for a in self.apps.values()]

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    async def stop(self) -> None:
        self._on_change = None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    async def create(self, settings: Settings) -> None:
        if settings["id"] in self.apps:
            raise AppExists(f"app {settings['id']!r} exists already")
        self.apps[settings["id"]] = copy.deepcopy(settings)
        self._changed()

    async def update(self, app_id: str, settings: Settings) -> None:
        if app_id not in self.apps:
            raise AppMissing(f"no app {app_id!r}")
        self.apps[app_id] = copy.deepcopy({**settings, "id": app_id})
        self._changed()

    async def delete(self, app_id: str) -> None:
        if self.apps.pop(app_id, None) is None:
            raise AppMissing(f"no app {app_id!r}")
        self._changed()
