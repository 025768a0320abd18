"""What the cluster tests share: presence as the clients see it and as REST reports it,
paced triggers, a check retried until it holds (`eventually`), deliveries counted per
subscriber (`exactly_once`), and the history tests' config."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
import orjson

from tests.helpers import TIMEOUT
from tests.helpers.client import Client, data, rest

HISTORY_CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
history_size = 5000

[[apps]]
id = "small-id"
key = "small-key"
secret = "small-secret"
history_size = 10

[[apps]]
id = "plain-id"
key = "plain-key"
secret = "plain-secret"
"""


async def eventually(check: Callable[[], Awaitable[None]], timeout: float = TIMEOUT) -> None:
    """Await `check()` until it raises no AssertionError; after `timeout` seconds the last
    AssertionError is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def http(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def ws(port: int, key: str = "app-key") -> str:
    """A Pusher client's WebSocket URL on the node at `port`, for app `key`."""
    return f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=t&version=1"


async def members_seen(client: Client, channel: str, quiet: float = 0.5) -> set[str]:
    """Replay what a client received into the member list a Pusher client would hold."""
    members: set[str] = set()
    while True:
        try:
            ev = await client.recv(timeout=quiet)
        except TimeoutError:
            return members
        if ev.get("channel") != channel:
            continue
        d = data(ev)
        if ev["event"] == "pusher_internal:subscription_succeeded":
            members = set(d["presence"]["ids"])
        elif ev["event"] == "pusher_internal:member_added":
            members.add(d["user_id"])
        elif ev["event"] == "pusher_internal:member_removed":
            members.discard(d["user_id"])


async def rest_users(port: int, channel: str) -> set[str]:
    status, body = await rest(http(port), "GET", f"/apps/app-id/channels/{channel}/users")
    assert status == 200, body
    return {u["id"] for u in body["users"]}


def presence_subscribe(c: Client, channel: str, user: str) -> dict:
    from pushwire.protocol.signing import channel_string_to_sign, sign_auth

    cd = orjson.dumps({"user_id": user, "user_info": {"n": user}}).decode()
    auth = sign_auth("app-key", "app-secret", channel_string_to_sign(c.socket_id, channel, cd))
    return {
        "event": "pusher:subscribe",
        "data": {"channel": channel, "auth": auth, "channel_data": cd},
    }


async def trigger_numbered(session: aiohttp.ClientSession, port: int, n: int) -> int:
    from pushwire.protocol.signing import sign_rest

    body = orjson.dumps({"name": "n", "channel": "load", "data": str(n)})
    path = "/apps/app-id/events"
    query = sign_rest("app-key", "app-secret", "POST", path, {}, body)
    try:
        async with session.post(
            http(port) + path,
            params=query,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def exactly_once(
    got: Sequence[str],
    accepted: Iterable[str],
    who: object = None,
    details: Sequence[Any] | None = None,
) -> None:
    """One subscriber's deliveries (event numbers, in arrival order; `details[i]`: what is
    known of delivery i, e.g. its history position) against the events answered 2xx: every
    accepted one arrived, and no event arrived twice, accepted or not (the tests' clients
    never ask for an event again: a second copy is a defect)."""
    counts = Counter(got)
    missing = [n for n in accepted if n not in counts]
    assert not missing, (who, "missing", sorted(missing, key=int)[:20], len(missing))
    twice = sorted((n for n, c in counts.items() if c > 1), key=int)
    if twice:
        copies = {
            n: [details[i] if details else i for i, m in enumerate(got) if m == n] for n in twice
        }
        raise AssertionError((who, "delivered more than once", copies))
