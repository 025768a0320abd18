"""The app: one tenant's credentials, limits and features, and its settings table.

An app's settings are the keys of a TOML `[[apps]]` table (what an app store holds, webhooks
as a list of tables); `parse_app` checks them with the same rules wherever they come from
(the config file, an app store, the admin API) and `app_settings` gives them back. An `App`
is immutable: a change makes a new one, and sockets hold the one they were admitted with
until the engine hands them the new one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..protocol.history import HistoryPolicy
from ..tables import ConfigError, build

APP_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # it is part of Redis keys and URLs

WEBHOOK_EVENT_TYPES = frozenset(
    {
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
        "client_event",
        "cache_miss",
        "subscription_count",
    }
)


@dataclass(frozen=True)
class WebhookFilter:
    channel_name_starts_with: str | None = None
    channel_name_ends_with: str | None = None


@dataclass(frozen=True)
class Webhook:
    url: str
    event_types: tuple[str, ...] = tuple(sorted(WEBHOOK_EVENT_TYPES))
    headers: Mapping[str, str] = field(default_factory=dict)
    filter: WebhookFilter = field(default_factory=WebhookFilter)


@dataclass(frozen=True)
class App:
    id: str
    key: str
    secret: str
    enabled: bool = True
    enable_client_messages: bool = True
    enable_user_authentication: bool = False  # kick sockets that neither sign in nor authorize
    user_authentication_timeout: float = 30.0
    enable_watchlist_events: bool = False
    enable_subscription_count: bool = False  # pusher_internal:subscription_count events
    max_connections: int = 0  # 0 = unlimited
    max_presence_members: int = 100
    max_presence_member_size: int = 1024  # bytes of user_info JSON
    max_presence_user_id_length: int = 128
    max_channel_name_length: int = 200
    max_event_name_length: int = 200
    max_message_size: int = 10240  # bytes of an event's data
    max_channels_per_trigger: int = 100
    max_batch_size: int = 10
    max_watchlist_size: int = 100
    client_event_rate: float = 10.0  # client events per second per connection
    # app-wide, deployment-wide rates (0 = no limit): REST events (each channel of each event,
    # batches too) and REST reads answer 429 past them; client events get 4301 and a socket
    # that keeps at it is closed (4100)
    max_backend_events_per_sec: float = 0.0
    max_read_requests_per_sec: float = 0.0
    max_client_events_per_sec: float = 0.0
    max_channels_per_connection: int = 100
    # browsers' Origin header must match one of these (wildcards: https://*.example.com);
    # empty: any origin
    allowed_origins: tuple[str, ...] = ()
    cache_ttl: float = 1800.0  # seconds a cache channel remembers its last event
    # channel history (opt-in): the last `history_size` events of each channel whose name
    # starts with one of `history_channels` (empty: every channel) are kept `history_ttl`
    # seconds, with offsets, so clients that opted in recover what they missed on reconnect
    history_size: int = 0
    history_ttl: float = 300.0
    history_channels: tuple[str, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    webhook_delay: float = 3.0  # seconds channel_vacated / member_removed wait (and cancel)
    webhook_batch_ms: float = 0.0  # > 0: wait this long so one POST carries many events
    # secret rotation: the old secret stays valid (REST signatures, channel and user auth)
    # until this unix time, so backends can be redeployed one by one
    previous_secret: str = ""
    previous_secret_until: float = 0.0

    @functools.cached_property
    def _history(self) -> HistoryPolicy | None:
        return HistoryPolicy(self.history_size, self.history_ttl) if self.history_size else None

    def history_policy(self, channel: str) -> HistoryPolicy | None:
        """How `channel` keeps history; None when it keeps none."""
        policy = self._history
        if policy is None or (
            self.history_channels and not channel.startswith(self.history_channels)
        ):
            return None
        return policy

    def allows_origin(self, origin: str) -> bool:
        """Whether a browser's Origin matches one of `allowed_origins` (case insensitive;
        `*` matches any run of characters, as in https://*.example.com)."""
        origin = origin.lower()
        return any(
            fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in self.allowed_origins
        )

    def secrets(self, now: float) -> tuple[str, ...]:
        """The secrets a signature may use now: the secret, and the previous one in grace."""
        if self.previous_secret and now < self.previous_secret_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


def _webhook(data: Any, where: str) -> Webhook:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: each webhook must be a table with a 'url'")
    known = {"url", "event_types", "headers", "filter"}
    for k in data:
        if k not in known:
            raise ConfigError(f"{where}: unknown key '{k}' (known: {', '.join(sorted(known))})")
    url = data.get("url")
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: key 'url' must be an http:// or https:// URL, got {url!r}")
    if not urlparse(url).netloc:
        raise ConfigError(f"{where}: key 'url' has no host: {url!r}")
    types = data.get("event_types", sorted(WEBHOOK_EVENT_TYPES))
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"{where}: key 'event_types' must be a list of strings")
    for t in types:
        if t not in WEBHOOK_EVENT_TYPES:
            raise ConfigError(
                f"{where}: unknown event type {t!r} in 'event_types' "
                f"(known: {', '.join(sorted(WEBHOOK_EVENT_TYPES))})"
            )
    headers = data.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{where}: key 'headers' must be a table of strings")
    flt = build(WebhookFilter, data.get("filter", {}), f"{where}.filter")
    return Webhook(url=url, event_types=tuple(types), headers=dict(headers), filter=flt)


_POSITIVE = (
    "max_presence_members",
    "max_presence_member_size",
    "max_presence_user_id_length",
    "max_channel_name_length",
    "max_event_name_length",
    "max_message_size",
    "max_channels_per_trigger",
    "max_batch_size",
    "max_watchlist_size",
    "client_event_rate",
    "cache_ttl",
    "user_authentication_timeout",
    "history_ttl",
)
MAX_HISTORY_SIZE = 10_000


def parse_app(data: Any, where: str) -> App:
    """One app from its settings (a [[apps]] table, as an app store holds it), with every
    check the config file gets; raises ConfigError naming `where`, the key and the problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: each [[apps]] entry must be a table")
    for required in ("id", "key", "secret"):
        if required not in data:
            raise ConfigError(f"{where}: missing required key '{required}'")
    app: App = build(App, data, where, skip=("webhooks",))
    for name in ("id", "key", "secret"):
        if not getattr(app, name):
            raise ConfigError(f"{where}: key '{name}' must not be empty")
    if ":" in app.key:
        raise ConfigError(f"{where}: key 'key' must not contain ':'")
    if not APP_ID_RE.fullmatch(app.id):
        raise ConfigError(f"{where}: key 'id' may hold only letters, digits, '-' and '_'")
    for name in _POSITIVE:
        if getattr(app, name) <= 0:
            raise ConfigError(f"{where}: key '{name}' must be greater than 0")
    if app.max_connections < 0:
        raise ConfigError(f"{where}: key 'max_connections' must be >= 0 (0 = unlimited)")
    if app.max_channels_per_connection < 1:
        raise ConfigError(f"{where}: key 'max_channels_per_connection' must be at least 1")
    if not 0 <= app.history_size <= MAX_HISTORY_SIZE:
        raise ConfigError(
            f"{where}: key 'history_size' must be 0 (no history) to {MAX_HISTORY_SIZE}"
        )
    for name in (
        "max_backend_events_per_sec",
        "max_read_requests_per_sec",
        "max_client_events_per_sec",
    ):
        if 0 < getattr(app, name) < 1 or getattr(app, name) < 0:
            raise ConfigError(f"{where}: key '{name}' must be 0 (no limit) or at least 1")
    hooks = data.get("webhooks", [])
    if not isinstance(hooks, list):
        raise ConfigError(f"{where}: key 'webhooks' must be a list of tables")
    webhooks = tuple(_webhook(h, f"{where}.webhooks[{i}]") for i, h in enumerate(hooks))
    return dataclasses.replace(app, webhooks=webhooks)


def app_settings(app: App) -> dict[str, Any]:
    """The settings of `app` as a [[apps]] table (what an app store holds): every key."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(App):
        value = getattr(app, f.name)
        if f.name == "webhooks":
            value = [
                {
                    "url": h.url,
                    "event_types": list(h.event_types),
                    "headers": dict(h.headers),
                    "filter": {
                        k: v for k, v in dataclasses.asdict(h.filter).items() if v is not None
                    },
                }
                for h in value
            ]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
