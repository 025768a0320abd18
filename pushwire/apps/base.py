"""Where apps live: the `AppStore` interface.

A store holds each app as its settings, the same keys as a TOML `[[apps]]` table (webhooks as
a list of tables). The server never reads a store per request: the `AppRegistry` keeps every
app in memory (lookups by key at each handshake, by id at each REST call) and loads the store
again whenever the store says something may have changed. Each row is checked with the same
rules as the config file; a bad row is refused with one log line and the other apps go on.

Guarantees a store gives:
- `load` returns every app's settings, or raises `StoreUnavailable`.
- After `start(on_change)`, `on_change` is called (from the event loop) within about a
  second of any change made through any store on any node (PostgreSQL: LISTEN/NOTIFY, with a
  periodic full reload as the fallback; TOML: on SIGHUP), and again after the store comes
  back from being unreachable.
- Writes (`create`, `update`, `delete`) are atomic per app and raise `AppExists`,
  `AppMissing`, `ReadOnlyStore` or `StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Settings = dict[str, Any]  # an app's settings, as in a TOML [[apps]] table (with its "id")


class StoreError(Exception):
    """A write the store refuses; the message is for the operator or the API caller."""


class StoreUnavailable(StoreError):
    pass


class AppExists(StoreError):
    pass


class AppMissing(StoreError):
    pass


class ReadOnlyStore(StoreError):
    pass


class AppStore(Protocol):
    kind: str  # "toml" | "postgres"

    async def load(self) -> list[Settings]: ...

    async def start(self, on_change: Callable[[], None]) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, settings: Settings) -> None: ...

    async def update(self, app_id: str, settings: Settings) -> None:
        """Replace the app's settings (the whole table; `id` cannot change)."""

    async def delete(self, app_id: str) -> None: ...
