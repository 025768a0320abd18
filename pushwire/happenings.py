"""Deployment-wide happenings (Pusher's webhook kinds) and who receives them.

Each is decided once for the whole deployment, by the node whose action caused it (or that
reaped a dead node), and handed to a `HappeningSink`: the webhooks.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from .apps.model import App


class Happening(enum.StrEnum):
    CHANNEL_OCCUPIED = "channel_occupied"
    CHANNEL_VACATED = "channel_vacated"
    MEMBER_ADDED = "member_added"
    MEMBER_REMOVED = "member_removed"
    CLIENT_EVENT = "client_event"
    CACHE_MISS = "cache_miss"
    SUBSCRIPTION_COUNT = "subscription_count"


class HappeningSink(Protocol):
    def wants(self, app: App, kind: Happening) -> bool:
        """Whether `emit` of this kind would do anything (skip the work otherwise)."""

    def emit(self, app: App, kind: Happening, channel: str | None = None, **fields: Any) -> None:
        """Record a happening; returns at once, never raises."""


class NoSink:
    def wants(self, app: App, kind: Happening) -> bool:
        return False

    def emit(self, app: App, kind: Happening, channel: str | None = None, **fields: Any) -> None:
        return None
