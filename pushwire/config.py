"""Configuration: TOML file, then `PUSHWIRE_*` environment variables, then command-line flags.

Every key is checked: an unknown key, a wrong type or a duplicate app id/key stops start-up
with one line naming the file, the key and the problem (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .apps.model import App, parse_app
from .tables import ConfigError as ConfigError  # the loader's error, for its callers
from .tables import build

DEMO_APP = ("app-id", "app-key", "app-secret")


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
    # WebSocket transport: only "raw" remains (transport/rawws.py); "aiohttp" was removed
    ws_transport: str = "raw"
    # plain REST triggers are parsed and answered by the raw listener (same checks and
    # answers, without aiohttp's request machinery)
    rest_fast_path: bool = True
    # SIGTERM: answer /ready with 503 for this long (load balancers stop sending new clients)
    # before clients are told to reconnect (4200) elsewhere; a second signal cuts it short
    drain_delay: float = 3.0


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
    # the apps the file and environment name (what the TOML app store starts from); the apps
    # served now are the registry's `AppIndex`
    apps: tuple[App, ...] = ()
    extensions: tuple[str, ...] = ()  # modules with a setup(ext) function
    demo_credentials: bool = False
    source: str = "<defaults>"


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
    server = build(ServerConfig, data.get("server", {}), f"{source}: [server]")
    cluster = build(ClusterConfig, data.get("cluster", {}), f"{source}: [cluster]")
    _check_cluster(cluster, source)
    store = build(AppsStoreConfig, data.get("apps_store", {}), f"{source}: [apps_store]")
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
    apps = tuple(parse_app(a, f"{source}: apps[{i}]") for i, a in enumerate(raw_apps))
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
    if server.ws_transport != "raw":
        raise ConfigError(
            f"{source}: [server]: key 'ws_transport' must be raw (the aiohttp WebSocket "
            "transport was removed: the raw one serves every socket; drop the key)"
        )
    if server.log_format not in ("plain", "json"):
        raise ConfigError(f"{source}: [server]: key 'log_format' must be plain or json")
    if server.workers < 1:
        raise ConfigError(f"{source}: [server]: key 'workers' must be at least 1")
    if not 0 <= server.drain_delay <= 3600:
        raise ConfigError(f"{source}: [server]: key 'drain_delay' must be 0 to 3600 seconds")
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


CLUSTER_URLS = ("redis_url", "bus_url", "state_url")  # [cluster] keys, env vars, flags


def _check_cluster(cluster: ClusterConfig, source: str) -> None:
    from .cluster.redis.urls import RedisKind, parse_redis_url

    kinds: set[RedisKind] = set()
    for name in CLUSTER_URLS:
        url = getattr(cluster, name)
        if url:
            try:
                target = parse_redis_url(url)
            except ValueError as exc:
                raise ConfigError(f"{source}: [cluster]: key '{name}': {exc}") from None
            if target.kind is RedisKind.CLUSTER:
                kinds.add(RedisKind.CLUSTER)
    if not cluster.redis_url and bool(cluster.bus_url) != bool(cluster.state_url):
        raise ConfigError(
            f"{source}: [cluster]: bus_url and state_url go together (or set redis_url, "
            "which is both)"
        )
    if RedisKind.CLUSTER in kinds:
        bus = cluster.bus_url or cluster.redis_url
        state = cluster.state_url or cluster.redis_url
        if bus != state:
            raise ConfigError(
                f"{source}: [cluster]: with Redis Cluster, bus and state are one cluster: set "
                "redis_url (or bus_url and state_url alike)"
            )
        if "{" in cluster.key_prefix or "}" in cluster.key_prefix:
            raise ConfigError(
                f"{source}: [cluster]: key 'key_prefix': no '{{' or '}}' with Redis Cluster "
                "(they decide the slots)"
            )
    if cluster.heartbeat_interval <= 0 or cluster.node_timeout <= cluster.heartbeat_interval:
        raise ConfigError(
            f"{source}: [cluster]: node_timeout must be greater than heartbeat_interval (> 0)"
        )




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
        ("drain_delay", float),
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
