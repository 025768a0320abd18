"""Helpers that tests and users share: a connection that records frames, a fake clock."""

from __future__ import annotations

from typing import Any

from .adapters.local import LocalAdapter
from .config import App, Config
from .connection import Connection
from .handler import PusherHandler, new_socket_id
from .hub import Hub
from .protocol.frames import Outbound


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConnection(Connection):
    """Records every message sent to it (`sent`) and its close (`close_code`)."""

    __slots__ = ("close_code", "close_reason", "sent")

    def __init__(self, app: App, socket_id: str | None = None, now: float = 0.0) -> None:
        super().__init__(app, socket_id or new_socket_id(), now)
        self.sent: list[Outbound] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def send(self, msg: Outbound) -> None:
        if not self.closed:
            self.sent.append(msg)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.close_reason = reason

    def wire(self) -> list[str]:
        """The exact JSON strings sent, in order."""
        return [m.payload.decode() for m in self.sent]

    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sent]

    def take(self) -> list[dict[str, Any]]:
        out = self.events()
        self.sent.clear()
        return out


def make_handler(config: Config, clock: FakeClock | None = None) -> PusherHandler:
    clock = clock or FakeClock()
    return PusherHandler(config, LocalAdapter(Hub(clock)), clock)
