"""The HTTP server underneath: aiohttp's, with the guards a server on the internet needs.

- A new TCP connection must deliver its first request's headers (a REST call, or the
  WebSocket upgrade) within `handshake_timeout`, or it is closed: silent sockets and
  header-trickling ones cannot hold file descriptors.
- Client mistakes (malformed HTTP, bad frames, aborted uploads) are counted in `/metrics`
  and logged at most once a minute per kind, in one line, never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import ERROR, RequestHandler

from ..metrics import Metrics

log = logging.getLogger("pushwire.http")


class GuardedServer(web.Server):
    def __init__(self, handler: Any, *, handshake_timeout: float, metrics: Metrics, **kw: Any):
        super().__init__(handler, **kw)
        self.handshake_timeout = handshake_timeout
        self.metrics = metrics
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}
        inner = self.request_factory

        def factory(*args: Any) -> web.BaseRequest:  # headers parsed: the handshake is done
            timer = self._timers.pop(args[2], None)
            if timer is not None:
                timer.cancel()
            if args[0] is ERROR:  # the request could not be parsed: aiohttp answers 400
                client_error(self.metrics, "malformed_http", "a request could not be parsed")
            return inner(*args)

        self.request_factory = factory

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._timers[handler] = self._loop.call_later(
            self.handshake_timeout, self._expire, handler, transport
        )

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(handler, exc)

    def _expire(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._timers.pop(handler, None)
        client_error(self.metrics, "handshake_timeout", "connection sent no request in time")
        transport.abort()


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, metrics: Metrics, handshake_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._metrics = metrics
        self._handshake_timeout = handshake_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            handshake_timeout=self._handshake_timeout,
            metrics=self._metrics,
            **server._kwargs,
        )


def bearer_token(request: web.BaseRequest) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" without one)."""
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


_last_logged: dict[str, float] = {}


def client_error(metrics: Metrics, kind: str, message: str) -> None:
    """Count a client's mistake; log one line per kind at most once a minute."""
    metrics.client_errors[kind] += 1
    now = time.monotonic()
    if now - _last_logged.get(kind, float("-inf")) >= 60.0:
        _last_logged[kind] = now
        log.info(
            "client error (%s): %s [%d so far; logged at most once a minute]",
            kind,
            message,
            metrics.client_errors[kind],
        )


class QuietClientErrors(logging.Filter):
    """aiohttp logs a traceback for every malformed request and reset connection; those are
    counted where they happen (`GuardedServer`), so their records are dropped here."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError | ConnectionError)
