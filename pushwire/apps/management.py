"""App administration over an app store: what the admin API and `pushwire apps` both do.

Every write is checked with the config file's rules first (ConfigError names the key and the
problem), and keys stay unique across apps."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..tables import ConfigError
from .base import AppExists, AppMissing, AppStore, Settings
from .model import App, app_settings, parse_app


class AppAdmin:
    def __init__(
        self,
        store: AppStore,
        secret_grace: float,
        written: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.store = store
        self.secret_grace = secret_grace
        self._written = written  # e.g. the registry's reload: applied here before answering

    async def apps(self) -> list[App]:
        """Every valid app in the store (bad rows are left out)."""
        out = []
        for row in await self.store.load():
            try:
                out.append(parse_app(row, "app store"))
            except ConfigError:
                continue
        return out

    async def get(self, app_id: str) -> App:
        for app in await self.apps():
            if app.id == app_id:
                return app
        raise AppMissing(f"no app {app_id!r}")

    async def _check(self, settings: Settings) -> App:
        app = parse_app(settings, f"app {settings.get('id')!r}")
        for other in await self.apps():
            if other.key == app.key and other.id != app.id:
                raise AppExists(f"key {app.key!r} belongs to app {other.id!r}")
        return app

    async def _done(self) -> None:
        if self._written is not None:
            await self._written()

    async def create(self, settings: Settings) -> App:
        settings = {**settings}
        settings.setdefault("key", secrets.token_hex(10))
        settings.setdefault("secret", secrets.token_hex(20))
        app = await self._check(settings)
        await self.store.create(app_settings(app))
        await self._done()
        return app

    async def update(self, app_id: str, changes: Settings) -> App:
        if "id" in changes and changes["id"] != app_id:
            raise ConfigError("an app's id cannot change")
        current = await self.get(app_id)
        app = await self._check({**app_settings(current), **changes})
        await self.store.update(app_id, app_settings(app))
        await self._done()
        return app

    async def set_enabled(self, app_id: str, enabled: bool) -> App:
        return await self.update(app_id, {"enabled": enabled})

    async def rotate_secret(
        self, app_id: str, secret: str | None = None, grace: float | None = None
    ) -> App:
        """A new secret; the old one stays valid for REST signatures and channel and user
        auth for `grace` seconds, so backends can be redeployed one by one. Webhooks are
        signed with the new one at once."""
        grace = self.secret_grace if grace is None else grace
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ConfigError("'grace' must be a number of seconds >= 0")
        current = await self.get(app_id)
        new = secret or secrets.token_hex(20)
        if not isinstance(new, str) or new == current.secret:
            raise ConfigError("'secret' must be a new string")
        return await self.update(
            app_id,
            {
                "secret": new,
                "previous_secret": current.secret,
                "previous_secret_until": time.time() + float(grace),
            },
        )

    async def delete(self, app_id: str) -> None:
        await self.store.delete(app_id)
        await self._done()
