"""REST API clients: `RestClient` (sync, one kept-alive HTTP connection) and
`AsyncRestClient` (aiohttp, pooled keep-alive). Errors raise `RestError` with the status."""

from __future__ import annotations

import http.client
import ssl as ssl_mod
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from ..protocol.signing import sign_rest


class RestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _event(
    channel_or_channels: str | Iterable[str],
    event: str,
    data: Any,
    socket_id: str | None,
    info: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": event,
        "data": data if isinstance(data, str) else orjson.dumps(data).decode(),
    }
    if isinstance(channel_or_channels, str):
        body["channel"] = channel_or_channels
    else:
        body["channels"] = list(channel_or_channels)
    if socket_id:
        body["socket_id"] = socket_id
    if info:
        body["info"] = info
    return body


class _Requests:
    """Builds signed requests for every API call; subclasses send them."""

    def __init__(self, app_id: str, key: str, secret: str) -> None:
        self.app_id, self.key, self.secret = app_id, key, secret

    def _signed(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> tuple[str, bytes]:
        raw = b"" if body is None else orjson.dumps(body)
        query = sign_rest(self.key, self.secret, method, path, params or {}, raw)
        return f"{path}?{urlencode(query)}", raw

    def _app(self, suffix: str) -> str:
        return f"/apps/{self.app_id}{suffix}"

    # each returns (method, path, params, body)
    def _trigger(
        self,
        channels: str | Iterable[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | None = None,
    ) -> tuple[Any, ...]:
        return "POST", self._app("/events"), None, _event(channels, event, data, socket_id, info)

    def _batch(self, events: Iterable[Mapping[str, Any]]) -> tuple[Any, ...]:
        batch = []
        for e in events:
            item = dict(e)
            if not isinstance(item.get("data"), str):
                item["data"] = orjson.dumps(item.get("data")).decode()
            batch.append(item)
        return "POST", self._app("/batch_events"), None, {"batch": batch}

    def _channels(self, prefix: str | None = None, info: str | None = None) -> tuple[Any, ...]:
        params = {k: v for k, v in (("filter_by_prefix", prefix), ("info", info)) if v}
        return "GET", self._app("/channels"), params, None

    def _channel(self, name: str, info: str | None = None) -> tuple[Any, ...]:
        return (
            "GET",
            self._app(f"/channels/{quote(name, safe='')}"),
            ({"info": info} if info else None),
            None,
        )

    def _users(self, name: str) -> tuple[Any, ...]:
        return "GET", self._app(f"/channels/{quote(name, safe='')}/users"), None, None

    def _terminate(self, user_id: str) -> tuple[Any, ...]:
        return (
            "POST",
            self._app(f"/users/{quote(user_id, safe='')}/terminate_connections"),
            None,
            {},
        )


def _answer(status: int, raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {"error": raw.decode(errors="replace")}
    if status not in (200, 202):
        raise RestError(status, body.get("error", "") if isinstance(body, dict) else str(body))
    return body if isinstance(body, dict) else {}


class RestClient(_Requests):
    """Blocking client keeping one HTTP/1.1 connection alive between calls."""

    def __init__(
        self,
        app_id: str,
        key: str,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 6001,
        ssl: bool = False,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(app_id, key, secret)
        self.host, self.port, self.ssl, self.timeout = host, port, ssl, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.ssl:
                self._conn = http.client.HTTPSConnection(
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    context=ssl_mod.create_default_context(),
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def _call(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> dict[str, Any]:
        target, raw = self._signed(method, path, params, body)
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        for attempt in (0, 1):  # a kept-alive connection the server closed: retry once
            conn = self._connection()
            try:
                conn.request(method, target, body=raw or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return _answer(resp.status, data)
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.CannotSendRequest,
            ):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def trigger(
        self,
        channels: str | Iterable[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | None = None,
    ) -> dict[str, Any]:
        return self._call(*self._trigger(channels, event, data, socket_id, info))

    def trigger_batch(self, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return self._call(*self._batch(events))

    def channels(self, prefix: str | None = None, info: str | None = None) -> dict[str, Any]:
        return self._call(*self._channels(prefix, info))

    def channel(self, name: str, info: str | None = None) -> dict[str, Any]:
        return self._call(*self._channel(name, info))

    def users(self, name: str) -> dict[str, Any]:
        return self._call(*self._users(name))

    def terminate_user_connections(self, user_id: str) -> dict[str, Any]:
        return self._call(*self._terminate(user_id))

    def send_to_user(self, user_id: str, event: str, data: Any) -> dict[str, Any]:
        return self.trigger(f"#server-to-user-{user_id}", event, data)


class AsyncRestClient(_Requests):
    """asyncio client on an aiohttp session (keep-alive connection pool)."""

    def __init__(
        self,
        app_id: str,
        key: str,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 6001,
        ssl: bool = False,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(app_id, key, secret)
        self.base = f"{'https' if ssl else 'http'}://{host}:{port}"
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def _call(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        target, raw = self._signed(method, path, params, body)
        async with self._session.request(
            method,
            self.base + target,
            data=raw or None,
            headers={"Content-Type": "application/json"},
        ) as r:
            return _answer(r.status, await r.read())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def trigger(
        self,
        channels: str | Iterable[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | None = None,
    ) -> dict[str, Any]:
        return await self._call(*self._trigger(channels, event, data, socket_id, info))

    async def trigger_batch(self, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return await self._call(*self._batch(events))

    async def channels(self, prefix: str | None = None, info: str | None = None) -> dict[str, Any]:
        return await self._call(*self._channels(prefix, info))

    async def channel(self, name: str, info: str | None = None) -> dict[str, Any]:
        return await self._call(*self._channel(name, info))

    async def users(self, name: str) -> dict[str, Any]:
        return await self._call(*self._users(name))

    async def terminate_user_connections(self, user_id: str) -> dict[str, Any]:
        return await self._call(*self._terminate(user_id))

    async def send_to_user(self, user_id: str, event: str, data: Any) -> dict[str, Any]:
        return await self.trigger(f"#server-to-user-{user_id}", event, data)
