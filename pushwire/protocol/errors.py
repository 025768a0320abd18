"""Pusher errors as classes that carry their code; they are rendered in one place.

Codes 4000-4299 follow Pusher's protocol document (they are also WebSocket close codes).
Pusher defines only 4301 and 4302 in the 4300 range; Pushwire uses the rest of that range for
rejections of a single message, which never close the connection:

    4300  invalid message (not JSON, wrong field types, binary frame, unknown event)
    4303  message too large
    4304  client event rejected (disabled, not private/presence, not subscribed, bad name)
    4305  invalid channel name or subscription data
"""

from __future__ import annotations


class PusherError(Exception):
    """An error a Pusher client is told about with a `pusher:error` event."""

    code: int | None = None
    close: bool = False  # whether the connection is closed with `code` afterwards

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


# Errors that close the connection (handshake and connection level).
class ConnectionError_(PusherError):
    close = True


class SSLOnly(ConnectionError_):
    code = 4000


class AppNotFound(ConnectionError_):
    code = 4001


class AppDisabled(ConnectionError_):
    code = 4003


class OverConnectionQuota(ConnectionError_):
    code = 4004


class PathNotFound(ConnectionError_):
    code = 4005


class InvalidVersion(ConnectionError_):
    code = 4006


class UnsupportedProtocol(ConnectionError_):
    code = 4007


class NoProtocolVersion(ConnectionError_):
    code = 4008


class ConnectionUnauthorized(ConnectionError_):
    code = 4009


class OverCapacity(ConnectionError_):
    code = 4100


class ReconnectNow(ConnectionError_):
    code = 4200


class PongTimeout(ConnectionError_):
    code = 4201


# Errors about one message; the connection stays open.
class Unauthorized(PusherError):
    """A subscription or sign-in whose signature does not verify."""

    code = 4009


class PresenceLimit(PusherError):
    """A presence channel is full (its member limit is reached)."""

    code = 4100


class InvalidMessage(PusherError):
    code = 4300


class RateLimited(PusherError):
    code = 4301


class WatchlistLimit(PusherError):
    code = 4302


class MessageTooLarge(PusherError):
    code = 4303


class ClientEventRejected(PusherError):
    code = 4304


class ChannelLimit(PusherError):
    """Too many channels on one connection."""

    code = 4300


class InvalidChannel(PusherError):
    code = 4305
