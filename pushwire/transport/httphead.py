"""Request heads the raw listener (transport/fastpath.py) takes itself: a plain RFC 6455
upgrade to `/app/{key}` and a plain REST trigger. Any head that is unusual in any way parses
to None and is aiohttp's to judge, exactly as without the raw listener: these parsers never
read a request differently from aiohttp, they only decline more often.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .rest import RestRoute

PREFIX = b"GET /app/"  # what an upgrade taken here starts with
KEY_RE = re.compile(r"[A-Za-z0-9._~-]+")  # app keys taken as they are (no %-decoding needed)
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
REQUEST_START_RE = re.compile(rb"[A-Z]{1,20}(?: |$)")  # what an HTTP request starts with
MAX_FIELDS = 100  # header lines a head may have (more: aiohttp judges it)
MAX_LINE = 8190  # and their length (aiohttp's own limit)
REST_TARGET_RE = re.compile(
    r"/apps/([A-Za-z0-9_~-][A-Za-z0-9._~-]*)/([a-z_]+)(?:\?([A-Za-z0-9._~!$&'()*+,;=:@/?%-]*))?"
)
QUERY_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")  # a query as RFC 3986 allows it
REST_REFUSED = frozenset(
    ("transfer-encoding", "expect", "upgrade", "content-encoding", "te", "trailer")
)
# headers aiohttp refuses to see twice (RFC 9110 singletons): a repeated one is aiohttp's
SINGLETONS = frozenset(
    (
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    )
)


class Upgrade:
    """A parsed WebSocket upgrade request."""

    __slots__ = ("app_key", "headers", "query", "ws_key")

    def __init__(self, app_key: str, query: str, headers: dict[str, list[str]], ws_key: str):
        self.app_key = app_key
        self.query = query
        self.headers = headers
        self.ws_key = ws_key

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def _plain_lines(head: bytes) -> list[str] | None:
    """The lines of a request head that aiohttp would take as they are: ASCII, at most
    MAX_FIELDS header lines of at most MAX_LINE bytes (the request line too); None for any
    other head (aiohttp judges it, and answers 400 where it must)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if len(lines) > MAX_FIELDS + 1 or any(len(line) > MAX_LINE for line in lines):
        return None
    return lines


def parse_upgrade(head: bytes) -> Upgrade | None:
    """The upgrade request in `head` (without the blank line), or None when it is anything
    else than a plain, well-formed RFC 6455 upgrade to /app/{key}: aiohttp takes those."""
    lines = _plain_lines(head)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
        return None
    path, _, query = parts[1].partition("?")
    app_key = path[5:]
    if (
        not path.startswith("/app/")
        or not KEY_RE.fullmatch(app_key)
        or not QUERY_RE.fullmatch(query)  # no '#', control characters, DEL, tabs, spaces
    ):
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.fullmatch(name) or BAD_VALUE_RE.search(value):
            return None
        lname = name.lower()
        if lname in SINGLETONS and lname in headers:
            return None  # a repeated Host, Content-Length...: aiohttp refuses it
        headers.setdefault(lname, []).append(value.strip(" \t"))
    if "host" not in headers:  # aiohttp refuses HTTP/1.1 without Host
        return None

    def one(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values is not None and len(values) == 1 else None

    upgrade = one("upgrade")
    tokens = {t.strip().lower() for v in headers.get("connection", ()) for t in v.split(",")}
    ws_key = one("sec-websocket-key")
    if (
        upgrade is None
        or upgrade.lower() != "websocket"
        or "upgrade" not in tokens
        or one("sec-websocket-version") != "13"
        or ws_key is None
        or "transfer-encoding" in headers
        or headers.get("content-length", ["0"]) != ["0"]
    ):
        return None
    try:
        if len(base64.b64decode(ws_key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return Upgrade(app_key, query, headers, ws_key)


class RestCall:
    """A request head the REST fast path takes."""

    __slots__ = ("app_id", "length", "query", "route", "target")

    def __init__(self, route: RestRoute, app_id: str, target: str, query: str, length: int):
        self.route = route
        self.app_id = app_id
        self.target = target
        self.query = query
        self.length = length


def parse_rest(head: bytes, routes: dict[str, RestRoute]) -> RestCall | None:
    """The fast-path REST call in `head` (without the blank line), or None for anything else:
    aiohttp takes those, exactly as without the fast path."""
    if not head.startswith(b"POST /apps/"):
        return None
    lines = _plain_lines(head)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        return None
    m = REST_TARGET_RE.fullmatch(parts[1])
    if m is None:
        return None
    route = routes.get(m[2])
    if route is None:
        return None
    length = -1
    seen: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if (
            not sep
            or len(line) > MAX_LINE
            or not TOKEN_RE.fullmatch(name)
            or BAD_VALUE_RE.search(value)
        ):
            return None  # obs-fold, bare CR, control characters, no colon...
        lname = name.lower()
        if lname in REST_REFUSED:
            return None
        if lname in SINGLETONS:
            if lname in seen:
                return None  # a repeated Content-Length, Host, ...
            seen.add(lname)
        if lname == "content-length":
            value = value.strip(" \t")
            if not value.isdigit() or len(value) > 12:
                return None  # signed, spaced, hexadecimal or absurd
            length = int(value)
        elif lname == "connection" and value.strip(" \t").lower() != "keep-alive":
            return None
    if length < 0 or "host" not in seen:  # aiohttp refuses HTTP/1.1 without Host
        return None
    return RestCall(route, m[1], parts[1], m[3] or "", length)

