"""Read-side queries: deployment-wide figures from the cluster state, and this node's own
(from the hub) while the state cannot be reached.

Guarantees: a query never raises for an unreachable store; it answers with local knowledge
and the link resyncs later (`channel_stats` answers None for a channel unknown to the store
while it is reachable). Only `cache_set` raises `Unavailable` (its caller reports it).
"""

from __future__ import annotations

from typing import Any

from ..apps.model import App
from ..cluster.base import ChannelStats, ClusterState, Unavailable
from ..hub import Hub
from ..protocol.frames import Outbound
from .link import ClusterLink


class Queries:
    def __init__(self, state: ClusterState, hub: Hub, link: ClusterLink) -> None:
        self.state = state
        self.hub = hub
        self.link = link

    async def channels(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        found = await self.link.call("channels", self.state.channels, app.id, prefix)
        return self.hub.local_stats(app, prefix) if found is None else found

    async def channel_stats(self, app: App, channel: str) -> ChannelStats | None:
        stats = await self.link.call("channel", self.state.channel_stats, app.id, channel)
        if stats is not None or self.link.healthy:
            return stats
        return self.hub.channel_stats(app, channel)

    async def members(self, app: App, channel: str) -> dict[str, Any]:
        found = await self.link.call("members", self.state.members, app.id, channel)
        if found is not None:
            return found
        return dict(sorted(self.hub.local_members(app, channel).items()))

    async def connection_count(self, app: App) -> int:
        n = await self.link.call("connections", self.state.connection_count, app.id)
        return self.hub.connection_count(app) if n is None else n

    async def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]:
        found = await self.link.call("online", self.state.online_users, app.id, user_ids)
        return self.hub.signed_in(app, user_ids) if found is None else found

    async def cache_set(self, app: App, channel: str, msg: Outbound) -> None:
        """Remember a cache channel's last event; raises Unavailable (the caller reports it)."""
        try:
            await self.state.cache_set(app.id, channel, msg.payload, app.cache_ttl)
        except Unavailable as exc:
            self.link.unavailable("cache", exc)
            raise

    async def cache_get(self, app: App, channel: str) -> tuple[Outbound, float] | None:
        found = await self.link.call("cache", self.state.cache_get, app.id, channel)
        return None if found is None else (Outbound(found[0]), found[1])

    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for the first caller deployment-wide within `ttl` (every caller while the
        store cannot be reached)."""
        won = await self.link.call("claim", self.state.claim_once, key, ttl)
        return True if won is None else won
