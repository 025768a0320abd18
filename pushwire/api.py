"""The Pusher REST API's logic, independent of HTTP: validate, act through the engine, answer.

Each function takes the already authenticated app and parsed input and returns the JSON
answer, or raises `ApiError` carrying the HTTP status: 503 when an event could not be confirmed
delivered to every node (the cluster bus or state is unavailable), never a silent 200. The
aiohttp layer (transport/rest.py) only parses requests, checks signatures and renders results.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .apps.model import App
from .cluster.base import ChannelStats, Unavailable
from .engine import Engine, RateKind
from .monitor import TrafficMonitor
from .protocol import messages
from .protocol.channels import (
    USER_ID_RE,
    channel_type,
    server_to_user_id,
    validate_channel_name,
)
from .protocol.errors import InvalidChannel
from .protocol.positions import MAX_OFFSET

SOCKET_ID_RE = re.compile(r"^\d+\.\d+$")
TRIGGER_INFO = frozenset({"user_count", "subscription_count"})
CHANNEL_INFO = frozenset({"user_count", "subscription_count", "cache"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # 429: seconds until the client may try again


async def _limit(engine: Engine, app: App, kind: RateKind, n: int, limit: float) -> None:
    wait = await engine.rate_limited(app, kind, n, limit)
    if wait:
        raise ApiError(
            429, f"Rate limit exceeded: at most {limit:g} {kind.value} per second", wait
        )


def _attrs(info: object, allowed: frozenset[str], where: str) -> set[str]:
    if info is None or info == "":
        return set()
    if not isinstance(info, str):
        raise ApiError(400, f"{where}: 'info' must be a comma-separated string")
    attrs = {a.strip() for a in info.split(",") if a.strip()}
    unknown = attrs - allowed
    if unknown:
        raise ApiError(
            400,
            f"{where}: unknown info attribute(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    return attrs


def _channel(app: App, name: object, where: str) -> str:
    try:
        return validate_channel_name(name, app.max_channel_name_length)
    except InvalidChannel as exc:
        raise ApiError(400, f"{where}: {exc.message}") from None


def _event(app: App, body: object, where: str, multi: bool) -> dict[str, Any]:
    """Validate one event of a trigger or batch; return name, data, channels, socket_id, info."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{where}: expected a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"{where}: 'name' must be a non-empty string")
    if len(name) > app.max_event_name_length:
        raise ApiError(400, f"{where}: event name longer than {app.max_event_name_length}")
    if name.startswith(("pusher:", "pusher_internal:")):
        raise ApiError(400, f"{where}: event names starting with pusher: are reserved")
    data = body.get("data")
    if data is None:
        raise ApiError(400, f"{where}: 'data' is required")
    if not isinstance(data, str):  # Pusher's data is a string; encode anything else once
        data = orjson.dumps(data).decode()
    # a code point is at most 4 bytes of UTF-8: short data needs no encoding to be measured
    if len(data) * 4 > app.max_message_size and len(data.encode()) > app.max_message_size:
        raise ApiError(413, f"{where}: event data larger than {app.max_message_size} bytes")
    if multi and "channels" in body:
        channels = body["channels"]
        if not isinstance(channels, list) or not channels:
            raise ApiError(400, f"{where}: 'channels' must be a non-empty list")
        if len(channels) > app.max_channels_per_trigger:
            raise ApiError(
                400, f"{where}: more than {app.max_channels_per_trigger} channels in one trigger"
            )
    elif "channel" in body:
        channels = [body["channel"]]
    else:
        raise ApiError(400, f"{where}: 'channel' or 'channels' is required")
    names = [_channel(app, c, where) for c in channels]
    if len(names) > 1 and len(set(names)) != len(names):
        raise ApiError(400, f"{where}: the same channel is named twice")
    socket_id = body.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or not SOCKET_ID_RE.fullmatch(socket_id)
    ):
        raise ApiError(400, f"{where}: invalid socket_id {socket_id!r}")
    info = body.get("info")
    attrs = set() if info is None else _attrs(info, TRIGGER_INFO, where)
    return {"name": name, "data": data, "channels": names, "socket_id": socket_id, "info": attrs}


def _info(stats: ChannelStats | None, attrs: set[str], presence: bool) -> dict[str, int]:
    out: dict[str, int] = {}
    if "user_count" in attrs and presence:
        out["user_count"] = 0 if stats is None or stats.user_count is None else stats.user_count
    if "subscription_count" in attrs:
        out["subscription_count"] = 0 if stats is None else stats.subscription_count
    return out


async def _deliver(
    engine: Engine, app: App, ev: dict[str, Any], monitor: TrafficMonitor | None
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for channel in ev["channels"]:
        msg = messages.channel_event(ev["name"], channel, ev["data"])
        if monitor is not None and monitor.active:
            monitor.emit(
                "publish",
                app.id,
                event=ev["name"],
                channel=channel,
                source="api",
                raw=msg.payload.decode(),
            )
        user_id = server_to_user_id(channel)
        if user_id is not None:
            await engine.send_to_user(app, user_id, msg, ev["socket_id"])
            continue
        ctype = channel_type(channel)
        if ctype.cache:
            await engine.cache_set(app, channel, msg)
        await engine.publish(app, channel, msg, ev["socket_id"])
        if ev["info"]:
            stats = await engine.channel_stats(app, channel)
            info[channel] = _info(stats, ev["info"], ctype.presence)
    return info


async def _delivered(
    engine: Engine, app: App, ev: dict[str, Any], monitor: TrafficMonitor | None
) -> dict[str, Any]:
    try:
        return await _deliver(engine, app, ev, monitor)
    except Unavailable as exc:
        raise ApiError(
            503, f"Event not accepted: delivery to every node could not be confirmed ({exc})"
        ) from None


async def trigger(
    engine: Engine, app: App, body: object, monitor: TrafficMonitor | None = None
) -> dict[str, Any]:
    ev = _event(app, body, "trigger", multi=True)
    if app.max_backend_events_per_sec > 0:  # 0: no limit (and no call to make)
        await _limit(
            engine,
            app,
            RateKind.BACKEND_EVENTS,
            len(ev["channels"]),
            app.max_backend_events_per_sec,
        )
    info = await _delivered(engine, app, ev, monitor)
    return {"channels": info} if ev["info"] else {}


async def trigger_batch(
    engine: Engine, app: App, body: object, monitor: TrafficMonitor | None = None
) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise ApiError(400, 'batch: expected {"batch": [...]}')
    batch = body["batch"]
    if len(batch) > app.max_batch_size:
        raise ApiError(400, f"batch: more than {app.max_batch_size} events in one batch")
    events = [_event(app, e, f"batch[{i}]", multi=False) for i, e in enumerate(batch)]
    if app.max_backend_events_per_sec > 0:
        limit = app.max_backend_events_per_sec
        await _limit(engine, app, RateKind.BACKEND_EVENTS, len(events), limit)
    results = [await _delivered(engine, app, ev, monitor) for ev in events]
    if any(ev["info"] for ev in events):
        return {
            "batch": [r.get(ev["channels"][0], {}) for r, ev in zip(results, events, strict=True)]
        }
    return {}


async def channels(engine: Engine, app: App, query: dict[str, str]) -> dict[str, Any]:
    await _limit(engine, app, RateKind.READ_REQUESTS, 1, app.max_read_requests_per_sec)
    prefix = query.get("filter_by_prefix", "")
    attrs = _attrs(query.get("info"), TRIGGER_INFO, "channels")
    if "user_count" in attrs and not prefix.startswith("presence-"):
        raise ApiError(
            400, "channels: info=user_count needs filter_by_prefix starting with presence-"
        )
    found = await engine.channels(app, prefix)
    return {
        "channels": {
            name: _info(stats, attrs, channel_type(name).presence)
            for name, stats in sorted(found.items())
        }
    }


async def channel(engine: Engine, app: App, name: str, query: dict[str, str]) -> dict[str, Any]:
    name = _channel(app, name, "channel")
    await _limit(engine, app, RateKind.READ_REQUESTS, 1, app.max_read_requests_per_sec)
    ctype = channel_type(name)
    attrs = _attrs(query.get("info"), CHANNEL_INFO, "channel")
    if "user_count" in attrs and not ctype.presence:
        raise ApiError(400, "channel: info=user_count is only for presence channels")
    if "cache" in attrs and not ctype.cache:
        raise ApiError(400, "channel: info=cache is only for cache channels")
    stats = await engine.channel_stats(app, name)
    out: dict[str, Any] = {"occupied": stats is not None and stats.subscription_count > 0}
    out.update(_info(stats, attrs, ctype.presence))
    if "cache" in attrs:
        cached = await engine.cache_get(app, name)
        if cached is not None:
            msg, ttl = cached
            out["cache"] = {"data": msg.json()["data"], "ttl": int(ttl)}
    return out


async def users(engine: Engine, app: App, name: str) -> dict[str, Any]:
    name = _channel(app, name, "users")
    await _limit(engine, app, RateKind.READ_REQUESTS, 1, app.max_read_requests_per_sec)
    if not channel_type(name).presence:
        raise ApiError(400, "users: only presence channels have users")
    members = await engine.members(app, name)
    return {"users": [{"id": uid} for uid in members]}


REST_HISTORY_BYTES = 8 * 1024 * 1024  # payload bytes of one history answer at most


def _int_param(query: dict[str, str], key: str, default: int | None, low: int, high: int) -> Any:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"history: '{key}' must be an integer from {low} to {high}")
    return int(raw)


async def history(engine: Engine, app: App, name: str, query: dict[str, str]) -> dict[str, Any]:
    """A channel's kept events (a Pushwire extension): the last `limit`, or with `since` the
    first `limit` after that offset, at most REST_HISTORY_BYTES of them. `complete` is false
    when some events after `since` are gone (trimmed, expired, or `since` is from before the
    current epoch) or past that bound (page on with a later `since`)."""
    name = _channel(app, name, "history")
    await _limit(engine, app, RateKind.READ_REQUESTS, 1, app.max_read_requests_per_sec)
    if app.history_policy(name) is None:
        raise ApiError(
            400,
            f"history: channel {name} keeps no history (the app's history_size is 0, or "
            "history_channels does not match it)",
        )
    top = max(app.history_size, 1)
    limit = _int_param(query, "limit", min(100, top), 1, top)
    since = _int_param(query, "since", None, 0, MAX_OFFSET)
    try:
        page = await engine.history(app, name, since, limit, REST_HISTORY_BYTES)
    except Unavailable as exc:
        raise ApiError(503, f"history: the store cannot be reached ({exc})") from None
    assert page is not None
    events = []
    for e in page.events:
        frame = orjson.loads(e.payload)
        item = {"offset": e.offset, "event": frame.get("event"), "data": frame.get("data")}
        if "user_id" in frame:
            item["user_id"] = frame["user_id"]
        item["published_at"] = e.time
        events.append(item)
    return {
        "epoch": page.top.epoch,
        "offset": page.top.offset,
        "complete": page.complete,
        "events": events,
    }


async def terminate(engine: Engine, app: App, user_id: str) -> dict[str, Any]:
    if (
        not user_id
        or len(user_id) > app.max_presence_user_id_length
        or not USER_ID_RE.fullmatch(user_id)
    ):
        raise ApiError(400, "terminate_connections: invalid user id")
    try:
        await engine.terminate_user(app, user_id)
    except Unavailable as exc:
        raise ApiError(503, f"terminate_connections not confirmed on every node ({exc})") from None
    return {}
