"""The abstract connection the protocol layer talks to: `send`, `close`, and its state.

The protocol handler and the hub never see a socket. The transports subclass this
(`transport.writes.QueuedConnection`: `send` queues a frame, flushed once per event-loop
tick; `transport.rawws.RawWsConnection` adds `close` and the inbound side);
`pushwire.testing.FakeConnection` records what was sent. One of these exists per open socket:
keep it slotted and its containers small (an idle socket's memory is mostly this object).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .protocol import messages
from .protocol.errors import PusherError
from .protocol.frames import Outbound

if TYPE_CHECKING:
    from .apps.model import App


class Connection:
    """One client's connection to an app. Methods here never block and never raise on I/O."""

    __slots__ = (
        "app",
        "authorized",
        "bucket_at",
        "bucket_tokens",
        "channels",
        "closed",
        "last_seen",
        "opened_at",
        "ping_sent_at",
        "socket_id",
        "strikes",
        "user_data",
        "user_id",
        "watchlist",
    )

    def __init__(self, app: App, socket_id: str, now: float) -> None:
        self.app = app
        self.socket_id = socket_id
        # channel name -> presence user id (None for channels that are not presence channels)
        self.channels: dict[str, str | None] = {}
        self.user_id: str | None = None  # set by pusher:signin
        self.user_data: str | None = None
        self.watchlist: tuple[str, ...] = ()
        self.authorized = False  # signed in or subscribed to an authorized channel
        self.closed = False
        self.last_seen = now
        self.opened_at = now
        self.ping_sent_at: float | None = None
        self.bucket_tokens = app.client_event_rate
        self.bucket_at = now
        self.strikes = 0  # client events refused in a row by the app-wide rate limit

    def send(self, msg: Outbound) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Start closing with a WebSocket close code; returns at once."""
        raise NotImplementedError

    def send_error_and_close(self, err: PusherError) -> None:
        """Tell the client with `pusher:error`, then close with the error's code."""
        if self.closed:
            return
        self.send(messages.error(err))
        self.close(err.code or 4200, err.message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.app.id}/{self.socket_id}>"
