"""The single-node adapter: all state is this process's Hub. Needs nothing installed."""

from __future__ import annotations

from typing import Any

import orjson

from ..config import App
from ..connection import Connection
from ..extensions import Extensions
from ..hub import ChannelStats, Hub
from ..monitor import TrafficMonitor
from ..protocol.errors import ConnectionUnauthorized
from ..protocol.frames import Outbound
from .base import Happening


class LocalAdapter:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.listeners: list[Happening] = []
        self._claims: dict[str, float] = {}
        self._ext = Extensions()
        hub.listeners.append(self._forward)

    def _forward(self, kind: str, app_id: str, channel: str, details: dict[str, Any]) -> None:
        st = self.hub.apps.get(app_id)
        if st is not None:
            for listener in self.listeners:
                listener(st.app, kind, channel, details)

    def bind_extensions(self, ext: Extensions, monitor: TrafficMonitor) -> None:
        self._ext = ext

    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        await self._ext.run_internal(kind, orjson.loads(orjson.dumps(payload)), "local")

    async def claim_once(self, key: str, ttl: float) -> bool:
        now = self.hub.clock()
        if len(self._claims) > 10_000:
            self._claims = {k: t for k, t in self._claims.items() if t > now}
        if self._claims.get(key, 0.0) > now:
            return False
        self._claims[key] = now + ttl
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def add_connection(self, conn: Connection) -> None:
        self.hub.add_connection(conn)

    async def remove_connection(self, conn: Connection) -> None:
        self.hub.remove_connection(conn)

    async def subscribe(
        self, conn: Connection, channel: str, member: tuple[str, Any] | None
    ) -> dict[str, Any] | None:
        ch = self.hub.subscribe(conn, channel, member)
        return ch.presence_hash() if ch.ctype.presence else None

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        self.hub.unsubscribe(conn, channel)

    async def publish(
        self, app: App, channel: str, msg: Outbound, except_socket_id: str | None
    ) -> None:
        self.hub.broadcast(app, channel, msg, except_socket_id)

    async def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None:
        self.hub.sign_in(conn, user_id, user_data)

    async def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> None:
        self.hub.send_to_user(app, user_id, msg, except_socket_id)

    async def terminate_user(self, app: App, user_id: str) -> int:
        conns = self.hub.user_connections(app, user_id)
        err = ConnectionUnauthorized("Connection terminated by the app (terminate_connections)")
        for conn in conns:
            conn.send_error_and_close(err)
        return len(conns)

    async def channels(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        hub = self.hub
        return {
            name: hub.stats(ch)
            for name, ch in hub.state(app).channels.items()
            if name.startswith(prefix)
        }

    async def channel_stats(self, app: App, channel: str) -> ChannelStats | None:
        ch = self.hub.channel(app, channel)
        return None if ch is None else self.hub.stats(ch)

    async def presence_members(self, app: App, channel: str) -> dict[str, Any]:
        ch = self.hub.channel(app, channel)
        return {} if ch is None else ch.presence_hash()

    async def connection_count(self, app: App) -> int:
        return self.hub.connection_count(app)

    async def cache_set(self, app: App, channel: str, msg: Outbound) -> None:
        self.hub.cache_set(app, channel, msg)

    async def cache_get(self, app: App, channel: str) -> tuple[Outbound, float] | None:
        entry = self.hub.cache_get(app, channel)
        if entry is None:
            return None
        return entry.msg, max(0.0, entry.expires_at - self.hub.clock())

    async def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]:
        return self.hub.online_users(app, user_ids)
