"""Configuration: TOML file, then `PUSHWIRE_*` environment variables, then command-line flags.

Every key is checked: an unknown key, a wrong type or a duplicate app id/key stops start-up
with one line naming the file, the key and the problem (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .protocol.history import HistoryPolicy

DEMO_APP = ("app-id", "app-key", "app-secret")
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


class ConfigError(Exception):
    """A configuration problem; its message is one line meant for the operator."""


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

    def secrets(self, now: float) -> tuple[str, ...]:
        """The secrets a signature may use now: the secret, and the previous one in grace."""
        if self.previous_secret and now < self.previous_secret_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 6001
    activity_timeout: int = 120  # seconds, announced to clients
    pong_timeout: float = 30.0  # seconds to wait for a pong before closing with 4201
    max_frame_size: int = 262144  # larger inbound frames close the socket with 1009
    max_pending_bytes: int = 4 * 1024 * 1024  # unsent output past which a socket is closed
    # Seconds of socket writes before the loop serves other work during a large fan-out.
    flush_slice: float = 0.0005
    max_request_body: int = 1024 * 1024
    # seconds a new TCP connection may take to send its first request's headers (HTTP or the
    # WebSocket upgrade), and a REST request its body; slower ones are closed
    handshake_timeout: float = 10.0
    body_timeout: float = 10.0
    # bytes of REST request bodies read at once, all requests together (others wait their turn)
    request_body_budget: int = 32 * 1024 * 1024
    # native TLS: both set = wss:// and https:// on the same port (PEM files)
    tls_cert: str = ""
    tls_key: str = ""
    # single node: channel history is written here on a graceful stop and read back at start,
    # so clients recover across a restart (a cluster keeps history in Redis); "" = not kept
    history_file: str = ""
    # per client address (this node): open WebSockets, and new ones per second (0 = no limit)
    max_connections_per_ip: int = 0
    max_new_connections_per_ip_per_sec: float = 0.0
    # proxies whose X-Forwarded-For is believed (IP addresses or CIDR networks)
    trusted_proxies: tuple[str, ...] = ()
    metrics_token: str = ""  # set: /metrics needs "Authorization: Bearer <token>"
    metrics_port: int = 0  # > 0: /metrics is served on this port only (same host)
    admin_token: str = ""  # set: /admin/apps answers to "Authorization: Bearer <token>"
    timestamp_window: float = 600.0
    log_level: str = "info"
    log_format: str = "plain"  # plain | json (one JSON object per line)
    dashboard_token: str = ""  # admin token for /dashboard (else each app's secret)
    webhook_retry_for: float = 600.0  # seconds a failing webhook is retried (backoff <= 60 s)
    webhook_queue_size: int = 100_000  # pending webhooks past which new ones are dropped
    webhook_concurrency: int = 8
    webhook_timeout: float = 10.0
    role: str = "all"  # all | websocket | api
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); > 1 needs [cluster]
    # WebSocket transport: "raw" (an asyncio.Protocol of our own, ~2 KB per idle socket) or
    # "aiohttp" (aiohttp's WebSocketResponse, ~15.5 KB); other HTTP is aiohttp's either way
    ws_transport: str = "raw"
    # with ws_transport = "raw": plain REST triggers are parsed and answered by the raw
    # transport too (same checks and answers, without aiohttp's request machinery)
    rest_fast_path: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    redis_url: str = ""  # empty: single node, all state in this process; else bus and state
    # the two roles apart (each defaults to redis_url): the bus (pub/sub and history: what a
    # publish touches) and the state (presence, counts, quotas, cache, leases, webhooks)
    bus_url: str = ""
    state_url: str = ""
    node_timeout: float = 6.0  # a node whose lease is this old is dead; its state is removed
    heartbeat_interval: float = 1.0  # lease renewal and dead-node check period
    key_prefix: str = "pw"


@dataclass(frozen=True)
class AppsStoreConfig:
    kind: str = "toml"  # toml (the [[apps]] of this file; SIGHUP reloads) | postgres
    dsn: str = ""  # postgres: "postgresql://user:pass@host:5432/db"
    reload_interval: float = 30.0  # seconds between full reloads (beside LISTEN/NOTIFY)
    secret_grace: float = 86400.0  # seconds the old secret stays valid after a rotation


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    apps_store: AppsStoreConfig = field(default_factory=AppsStoreConfig)
    apps: tuple[App, ...] = ()
    extensions: tuple[str, ...] = ()  # modules with a setup(ext) function
    demo_credentials: bool = False
    source: str = "<defaults>"

    _by_key: dict[str, App] = field(init=False, repr=False, compare=False, default_factory=dict)
    _by_id: dict[str, App] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.replace_apps(self.apps)

    def replace_apps(self, apps: tuple[App, ...]) -> None:
        """The app index is live: the app registry swaps in what the app store holds now
        (each lookup sees the old or the new index, never a mix)."""
        object.__setattr__(self, "apps", tuple(apps))
        object.__setattr__(self, "_by_key", {a.key: a for a in apps})
        object.__setattr__(self, "_by_id", {a.id: a for a in apps})

    def app_by_key(self, key: str) -> App | None:
        return self._by_key.get(key)

    def app_by_id(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: key '{key}' must be a finite number, got {value!r}")
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        name = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"{where}: key '{key}' must be of type {name}, got {value!r}")
    return value


def _build(cls: Any, data: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip:
            continue
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
        expected = {"str": str, "int": int, "float": float, "bool": bool}.get(
            str(f.type).split(" |")[0]
        )
        if expected is not None:
            value = _check_type(where, key, value, expected)
        elif str(f.type).startswith("tuple[str"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: key '{key}' must be a list of strings")
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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
    flt = _build(WebhookFilter, data.get("filter", {}), f"{where}.filter")
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


def _app(data: Any, where: str) -> App:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: each [[apps]] entry must be a table")
    for required in ("id", "key", "secret"):
        if required not in data:
            raise ConfigError(f"{where}: missing required key '{required}'")
    app: App = _build(App, data, where, skip=("webhooks",))
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


def parse_app(settings: Mapping[str, Any], where: str) -> App:
    """One app from its settings (a [[apps]] table, as an app store holds it), with every
    check the config file gets; raises ConfigError naming `where`, the key and the problem."""
    return _app(settings, where)


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


def parse(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a Config from parsed TOML data, validating every key."""
    for key in data:
        if key not in ("server", "cluster", "apps", "apps_store", "extensions"):
            raise ConfigError(
                f"{source}: unknown top-level key '{key}' "
                "(known: server, cluster, apps, apps_store, extensions)"
            )
    ext = data.get("extensions", {})
    if not isinstance(ext, Mapping) or set(ext) - {"modules"}:
        raise ConfigError(f"{source}: [extensions]: only the key 'modules' is known")
    modules = ext.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{source}: [extensions]: key 'modules' must be a list of strings")
    server = _build(ServerConfig, data.get("server", {}), f"{source}: [server]")
    cluster = _build(ClusterConfig, data.get("cluster", {}), f"{source}: [cluster]")
    _check_cluster(cluster, source)
    store = _build(AppsStoreConfig, data.get("apps_store", {}), f"{source}: [apps_store]")
    if store.kind not in ("toml", "postgres"):
        raise ConfigError(f"{source}: [apps_store]: key 'kind' must be toml or postgres")
    if store.kind == "postgres" and not store.dsn:
        raise ConfigError(f"{source}: [apps_store]: kind = postgres needs a 'dsn'")
    if store.reload_interval <= 0 or store.secret_grace < 0:
        raise ConfigError(
            f"{source}: [apps_store]: reload_interval must be > 0 and secret_grace >= 0"
        )
    raw_apps = data.get("apps", [])
    if not isinstance(raw_apps, list):
        raise ConfigError(f"{source}: 'apps' must be an array of tables ([[apps]])")
    apps = tuple(_app(a, f"{source}: apps[{i}]") for i, a in enumerate(raw_apps))
    for attr in ("id", "key"):
        seen: set[str] = set()
        for i, a in enumerate(apps):
            v = getattr(a, attr)
            if v in seen:
                raise ConfigError(f"{source}: apps[{i}]: duplicate app {attr} {v!r}")
            seen.add(v)
    _check_server(server, source)
    return Config(
        server=server,
        cluster=cluster,
        apps_store=store,
        apps=apps,
        extensions=tuple(modules),
        source=source,
    )


def _check_server(server: ServerConfig, source: str) -> None:
    """Every [server] rule, for every source (file, environment, flags): `load` runs it on the
    merged result, so an override is held to the same rules as the file."""
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"{source}: [server]: key 'port' must be between 0 and 65535")
    if not 0 <= server.metrics_port <= 65535:
        raise ConfigError(f"{source}: [server]: key 'metrics_port' must be between 0 and 65535")
    if server.role not in ("all", "websocket", "api"):
        raise ConfigError(f"{source}: [server]: key 'role' must be all, websocket or api")
    if server.ws_transport not in ("raw", "aiohttp"):
        raise ConfigError(f"{source}: [server]: key 'ws_transport' must be raw or aiohttp")
    if server.log_format not in ("plain", "json"):
        raise ConfigError(f"{source}: [server]: key 'log_format' must be plain or json")
    if server.workers < 1:
        raise ConfigError(f"{source}: [server]: key 'workers' must be at least 1")
    for name in ("max_connections_per_ip", "max_new_connections_per_ip_per_sec"):
        value = getattr(server, name)
        if value < 0 or 0 < value < 1:
            raise ConfigError(f"{source}: [server]: key '{name}' must be 0 (no limit) or >= 1")
    for name in (
        "activity_timeout",
        "pong_timeout",
        "max_pending_bytes",
        "flush_slice",
        "timestamp_window",
        "handshake_timeout",
        "body_timeout",
        "max_request_body",
        "max_frame_size",
        "request_body_budget",
    ):
        if getattr(server, name) <= 0:
            raise ConfigError(f"{source}: [server]: key '{name}' must be greater than 0")
    if bool(server.tls_cert) != bool(server.tls_key):
        given, missing = ("tls_cert", "tls_key") if server.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(
            f"{source}: [server]: key '{missing}' must be set too when '{given}' is set "
            "(both PEM files, or neither)"
        )
    for name in ("tls_cert", "tls_key"):
        path = getattr(server, name)
        if not path:
            continue
        if not os.path.isfile(path):
            raise ConfigError(f"{source}: [server]: key '{name}': no such file {path!r}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{source}: [server]: key '{name}': cannot read {path!r}: {exc.strerror}"
            ) from None


def _check_cluster(cluster: ClusterConfig, source: str) -> None:
    from .cluster.redis.urls import parse_url

    for name in ("redis_url", "bus_url", "state_url"):
        url = getattr(cluster, name)
        if url:
            try:
                parse_url(url)
            except ValueError as exc:
                raise ConfigError(f"{source}: [cluster]: key '{name}': {exc}") from None
    if not cluster.redis_url and bool(cluster.bus_url) != bool(cluster.state_url):
        raise ConfigError(
            f"{source}: [cluster]: bus_url and state_url go together (or set redis_url, "
            "which is both)"
        )
    if cluster.heartbeat_interval <= 0 or cluster.node_timeout <= cluster.heartbeat_interval:
        raise ConfigError(
            f"{source}: [cluster]: node_timeout must be greater than heartbeat_interval (> 0)"
        )



CLUSTER_URLS = ("redis_url", "bus_url", "state_url")  # [cluster] keys, env vars, flags


def _env_bool(raw: str) -> bool:
    return raw.strip().lower() not in ("0", "false", "no", "off")

def load(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the file (if any), apply `PUSHWIRE_*` variables, then `overrides` (from flags).

    With no app configured, one demo app (`app-id` / `app-key` / `app-secret`) is added and
    `demo_credentials` is set so the server can warn about it.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        source = path
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    cfg = parse(data, source)
    server_over: dict[str, Any] = {}
    for key, conv in (
        ("host", str),
        ("port", int),
        ("log_level", str),
        ("workers", int),
        ("role", str),
        ("ws_transport", str),
        ("rest_fast_path", _env_bool),
    ):
        raw = env.get(f"PUSHWIRE_{key.upper()}")
        if raw:
            try:
                server_over[key] = conv(raw)
            except ValueError:
                raise ConfigError(f"PUSHWIRE_{key.upper()}: invalid value {raw!r}") from None
    cluster_over: dict[str, Any] = {}
    for key in CLUSTER_URLS:
        if env.get(f"PUSHWIRE_{key.upper()}"):
            cluster_over[key] = env[f"PUSHWIRE_{key.upper()}"]
    for key, value in (overrides or {}).items():
        if value is not None:
            if key in CLUSTER_URLS:
                cluster_over[key] = value
            else:
                server_over[key] = value
    server = dataclasses.replace(cfg.server, **server_over)
    cluster = dataclasses.replace(cfg.cluster, **cluster_over)
    _check_server(server, "environment or flags")
    _check_cluster(cluster, "environment or flags")
    if cluster.redis_url:  # both roles on it, unless one is set apart
        cluster = dataclasses.replace(
            cluster,
            bus_url=cluster.bus_url or cluster.redis_url,
            state_url=cluster.state_url or cluster.redis_url,
        )
    if server.workers > 1 and not cluster.bus_url:
        raise ConfigError(
            f"--workers {server.workers} needs a Redis URL ([cluster] redis_url, --redis-url or "
            "PUSHWIRE_REDIS_URL): separate processes share state only through Redis"
        )
    apps = cfg.apps
    demo = False
    env_app = [env.get(f"PUSHWIRE_APP_{k}") for k in ("ID", "KEY", "SECRET")]
    if any(env_app):
        if not all(env_app):
            raise ConfigError(
                "PUSHWIRE_APP_ID, PUSHWIRE_APP_KEY and PUSHWIRE_APP_SECRET must be set together"
            )
        app = App(id=env_app[0] or "", key=env_app[1] or "", secret=env_app[2] or "")
        apps = (app, *(a for a in apps if a.id != app.id and a.key != app.key))
    if not apps and cfg.apps_store.kind == "toml":  # (a database store brings its own apps)
        apps = (App(*DEMO_APP),)
        demo = True
    return Config(
        server=server,
        cluster=cluster,
        apps_store=cfg.apps_store,
        apps=apps,
        extensions=cfg.extensions,
        demo_credentials=demo,
        source=source,
    )
