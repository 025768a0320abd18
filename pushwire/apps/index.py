"""The app index: the apps this node serves, looked up by key (each handshake) and by id
(each REST call, each bus message) without touching the app store.

Its owner, the `AppRegistry`, is the only writer: it swaps in what the store holds now
(`replace`), whole; every other part reads it (passed to it by constructor). Unchanged apps
keep their objects across a swap (open sockets hold them).
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import App


class AppIndex:
    def __init__(self, apps: Iterable[App] = ()) -> None:
        self.replace(apps)

    def replace(self, apps: Iterable[App]) -> None:
        """Serve `apps` from now on (the registry's job: nobody else calls this)."""
        listed = tuple(apps)
        self._by_key = {a.key: a for a in listed}
        self._by_id = {a.id: a for a in listed}
        self.apps = listed

    def by_key(self, key: str) -> App | None:
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)
