"""The interface between the protocol layer and where state lives (one node or a cluster).

Guarantees every adapter gives:
- `publish` delivers a message to every subscriber of the channel, on every node, in the order
  `publish` was called for that channel from one node, except the socket `except_socket_id`.
  Delivery is at most once: a socket that is gone is skipped.
- `subscribe` / `unsubscribe` emit `member_added` / `member_removed` exactly once per user
  joining / leaving a presence channel, counted over the whole deployment.
- Counts (`channels`, `channel_stats`, `presence_members`, `connection_count`) describe the
  whole deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import App
from ..connection import Connection
from ..hub import ChannelStats, Hub
from ..protocol.frames import Outbound

if TYPE_CHECKING:
    from ..extensions import Extensions
    from ..monitor import TrafficMonitor

# A deployment-wide happening: (app, kind, channel, fields). Kinds: channel_occupied,
# channel_vacated, member_added (fields: user_id), member_removed (fields: user_id). Each is
# reported once for the whole deployment, by the node that decided it.
Happening = Callable[[App, str, str, dict[str, Any]], None]


class Adapter(Protocol):
    hub: Hub  # this node's local state, used for local delivery
    listeners: list[Happening]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add_connection(self, conn: Connection) -> None:
        """Register a new connection; raise OverConnectionQuota past the app's quota."""

    async def remove_connection(self, conn: Connection) -> None:
        """Forget a closed connection: its subscriptions, presence memberships, sign-in."""

    async def subscribe(
        self, conn: Connection, channel: str, member: tuple[str, Any] | None
    ) -> dict[str, Any] | None:
        """Subscribe; on presence channels return the members hash (user_id -> user_info)."""

    async def unsubscribe(self, conn: Connection, channel: str) -> None: ...

    async def publish(
        self, app: App, channel: str, msg: Outbound, except_socket_id: str | None
    ) -> None: ...

    async def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None: ...

    async def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> None: ...

    async def terminate_user(self, app: App, user_id: str) -> int:
        """Close every connection signed in as `user_id`; return how many there were."""

    async def channels(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        """Occupied channels whose name starts with `prefix`."""

    async def channel_stats(self, app: App, channel: str) -> ChannelStats | None: ...

    async def presence_members(self, app: App, channel: str) -> dict[str, Any]: ...

    async def connection_count(self, app: App) -> int: ...

    async def cache_set(self, app: App, channel: str, msg: Outbound) -> None: ...

    async def cache_get(self, app: App, channel: str) -> tuple[Outbound, float] | None:
        """The cached event of a cache channel and its remaining TTL in seconds."""

    async def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]: ...

    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for the first caller in the deployment within `ttl` seconds (de-duplication)."""

    def bind_extensions(self, ext: Extensions, monitor: TrafficMonitor) -> None:
        """Deliver custom internal messages to `ext` and traffic to `monitor`, cluster-wide."""

    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        """Run the handlers of custom internal message `kind` on every node (this one too)."""
