"""The app registry: every app in memory, loaded from the app store and kept current.

Lookups (`AppIndex.by_key` at each handshake, `AppIndex.by_id` at each REST call) never
touch the store: the registry owns the app index and swaps in what the store holds whenever
the store says apps may have changed, and tells the engine what that means for open
connections (an app disabled or deleted closes its sockets; a changed one applies to them at
once). Each node does this for itself, so a change reaches every node of a cluster through
the store.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..tables import ConfigError
from .base import AppStore, StoreUnavailable
from .index import AppIndex
from .model import App, parse_app

log = logging.getLogger("pushwire.apps")


class AppChangeKind(enum.StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    DISABLED = "disabled"
    DELETED = "deleted"


@dataclass
class AppChanges:
    changed: list[tuple[AppChangeKind, App]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed)


def diff(old: dict[str, App], new: dict[str, App]) -> AppChanges:
    out = AppChanges()
    for app_id, app in new.items():
        before = old.get(app_id)
        if before is None:
            out.changed.append((AppChangeKind.ADDED, app))
        elif before != app:
            kind = (
                AppChangeKind.DISABLED
                if before.enabled and not app.enabled
                else AppChangeKind.UPDATED
            )
            out.changed.append((kind, app))
    for app_id, app in old.items():
        if app_id not in new:
            out.changed.append((AppChangeKind.DELETED, app))
    return out


class AppRegistry:
    def __init__(
        self,
        apps: AppIndex,
        store: AppStore,
        on_changes: Callable[[AppChanges], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apps = apps  # owned: this registry is its only writer
        self.store = store
        self.on_changes = on_changes
        self.clock = clock
        self.healthy = True
        self._bad: dict[str, str] = {}  # app id -> the problem last logged for it
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._lock = asyncio.Lock()  # one reload at a time: a later one never applies older

    async def start(self) -> None:
        await self.reload()
        await self.store.start(self.changed)

    async def stop(self) -> None:
        await self.store.stop()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=2.0)

    def changed(self) -> None:
        """The store says apps may have changed: reload (one at a time, none lost)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._reload_until_quiet())

    async def _reload_until_quiet(self) -> None:
        while True:
            self._again = False
            await self.reload()
            if not self._again:
                return

    async def reload(self) -> AppChanges:
        """Load every app from the store and apply the differences."""
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> AppChanges:
        try:
            rows = await self.store.load()
        except StoreUnavailable as exc:
            if self.healthy:
                self.healthy = False
                log.error("app store unreachable (%s): serving the apps already loaded", exc)
            return AppChanges()
        if not self.healthy:
            self.healthy = True
            log.warning("app store is back")
        apps: dict[str, App] = {}
        keys: set[str] = set()
        bad: dict[str, str] = {}
        for row in rows:
            app_id = str(row.get("id", "?"))
            try:
                app = parse_app(row, f"app store: app {app_id!r}")
                if app.key in keys:
                    raise ConfigError(f"app store: app {app_id!r}: key {app.key!r} is taken")
            except ConfigError as exc:
                bad[app_id] = str(exc)
                last_good = self.apps.by_id(app_id)
                if self._bad.get(app_id) != str(exc):
                    log.error(
                        "%s (%s; the others are served)",
                        exc,
                        "its last good settings stay in force"
                        if last_good is not None
                        else "this app is refused",
                    )
                if last_good is not None and last_good.key not in keys:
                    apps[app_id] = last_good  # a typo must not disconnect its clients
                    keys.add(last_good.key)
                continue
            apps[app.id] = app
            keys.add(app.key)
        self._bad = bad
        old = {a.id: a for a in self.apps.apps}
        changes = diff(old, apps)
        if changes:  # unchanged apps keep their objects (open sockets hold them)
            kept = {i: old[i] if old.get(i) == a else a for i, a in apps.items()}
            self.apps.replace(kept.values())
            for kind, app in changes.changed:
                log.info("app %s %s", app.id, kind.value)
            self.on_changes(changes)
        return changes
