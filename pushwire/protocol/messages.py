"""Server-to-client Pusher messages with their exact wire form.

Pusher's double encoding: `data` of every event the server emits is a JSON *string*, except
the `pusher:error`, `pusher:ping`, `pusher:pong` and `pusher:signin_success` system events,
whose `data` is an object (PROTOCOL.md, "System Events"). Channel
events from the REST API carry the string the API received, untouched; client events are
forwarded with the `data` the sender gave.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import PusherError
from .frames import Outbound
from .positions import Position

_dumps = orjson.dumps


def _system(event: str, data: Any) -> Outbound:
    """A `pusher:` system event whose `data` is an object, as hosted Pusher sends it (the
    official Swift SDK, for one, reads `pusher:error` data only as an object)."""
    return Outbound(_dumps({"event": event, "data": data}))


def _event(event: str, data: Any, channel: str | None = None) -> Outbound:
    msg: dict[str, Any] = {"event": event}
    if channel is not None:
        msg["channel"] = channel
    msg["data"] = _dumps(data).decode()
    return Outbound(_dumps(msg))


def connection_established(socket_id: str, activity_timeout: int) -> Outbound:
    return _event(
        "pusher:connection_established",
        {"socket_id": socket_id, "activity_timeout": activity_timeout},
    )


def error(err: PusherError) -> Outbound:
    return _system("pusher:error", {"code": err.code, "message": err.message})


def error_message(code: int | None, message: str) -> Outbound:
    return _system("pusher:error", {"code": code, "message": message})


PONG = _system("pusher:pong", {})
PING = _system("pusher:ping", {})


def subscription_succeeded(channel: str) -> Outbound:
    return _event("pusher_internal:subscription_succeeded", {}, channel)


def presence_subscription_succeeded(channel: str, members: dict[str, Any]) -> Outbound:
    data = {"presence": {"ids": list(members), "hash": members, "count": len(members)}}
    return _event("pusher_internal:subscription_succeeded", data, channel)


def subscription_error(channel: str, err: PusherError, status: int) -> Outbound:
    """Non-standard but understood by pusher-js: reaches the channel's `subscription_error`."""
    data = {"type": type(err).__name__, "error": err.message, "status": status}
    return _event("pusher:subscription_error", data, channel)


def member_added(channel: str, user_id: str, user_info: Any) -> Outbound:
    data: dict[str, Any] = {"user_id": user_id}
    if user_info is not None:
        data["user_info"] = user_info
    return _event("pusher_internal:member_added", data, channel)


def member_removed(channel: str, user_id: str) -> Outbound:
    return _event("pusher_internal:member_removed", {"user_id": user_id}, channel)


def subscription_count(channel: str, count: int) -> Outbound:
    return _event("pusher_internal:subscription_count", {"subscription_count": count}, channel)


def cache_miss(channel: str) -> Outbound:
    return Outbound(_dumps({"event": "pusher:cache_miss", "channel": channel}))


def signin_success(user_data: str) -> Outbound:
    return _system("pusher:signin_success", {"user_data": user_data})


def watchlist_events(events: list[dict[str, Any]]) -> Outbound:
    return _event("pusher_internal:watchlist_events", {"events": events})


def positioned(msg: Outbound, position: Position) -> Outbound:
    """`msg` (a JSON object) with its history position added as top-level `offset` and
    `epoch`: the frame a socket that opted in to positions gets. Spliced in, not re-encoded:
    the rest stays byte for byte the frame the other sockets get."""
    tail = b',"offset":%d,"epoch":"%s"}' % (position.offset, position.epoch.encode())
    return Outbound(msg.payload[:-1] + tail)


def position_only(channel: str, position: Position) -> Outbound:
    """Tells a socket that opted in to positions that an event it does not get (it sent it
    itself, or the trigger excluded it) took `position`: it must not recover it later."""
    return Outbound(
        _dumps(
            {
                "event": "pushwire:position",
                "channel": channel,
                "offset": position.offset,
                "epoch": position.epoch,
            }
        )
    )


def recovery_receipt(msg: Outbound, top: Position | None, recovered: bool | None) -> Outbound:
    """A subscription_succeeded for a socket that opted in to positions: the channel's last
    position (`epoch`, `offset`; absent when the channel keeps no history) and, when it asked
    to recover, whether every missed event was sent (`recovered`)."""
    extra: dict[str, Any] = {}
    if top is not None:
        extra["offset"] = top.offset
        extra["epoch"] = top.epoch
    if recovered is not None:
        extra["recovered"] = recovered
    if not extra:
        return msg
    return Outbound(msg.payload[:-1] + b"," + _dumps(extra)[1:])


def channel_event(event: str, channel: str, data: Any, user_id: str | None = None) -> Outbound:
    """A channel event. `data` is sent as given: a string from the REST API stays a string."""
    msg: dict[str, Any] = {"event": event, "channel": channel, "data": data}
    if user_id is not None:
        msg["user_id"] = user_id
    return Outbound(_dumps(msg))
