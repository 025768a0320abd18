"""Property-based fuzzing of inbound WebSocket messages and REST bodies, without sockets.

Bounded and reproducible for CI: every property sets `max_examples`, `derandomize=True` (the
same examples on every run) and `database=None` (nothing written to `.hypothesis/`).

WebSocket properties, for any sequence of inbound frames (random text, random JSON, deep
nesting, and Pusher messages that are structured but wrong, some correctly signed):
  - `on_text` never raises;
  - every frame sent is valid JSON whose `event` is a string; a `pusher:error` carries
    `data` as an object `{"code": int (4000..4399) | None, "message": str}`;
  - a closed connection has a Pusher close code (4000..4399), preceded by a `pusher:error`;
  - afterwards the same connection (if open) or a fresh one answers `pusher:ping` with a pong;
  - once every connection is gone, no channel, user or connection is left: state does not
    grow across examples (one handler serves every example).

REST properties (`pushwire.api` directly): any body or query gives a dict (that encodes as
JSON) or `api.ApiError` with an expected status; never another exception.

The strategies live in tests/helpers/fuzz_values.py and fuzz_frames.py (shared with
tests/server/test_fuzz_server.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pushwire import api
from pushwire.apps.model import App
from pushwire.config import Config, ServerConfig
from pushwire.handler import PusherHandler
from pushwire.protocol.frames import loads_checked
from pushwire.testing import FakeClock, FakeConnection, make_handler
from tests.helpers.fuzz_frames import (
    AUTH,
    PING,
    PONG,
    TRANSPORT_CLOSE_CODES,
    Frame,
    check_event,
    deep_frames,
    frame_lists,
    hits_known_bug_deep_user_info,
    msg_frame,
    resolve,
)
from tests.helpers.fuzz_values import FUZZ_SETTINGS, KEY, SECRET, nested, rest_calls

# --------------------------------------------------------------------------------------------
# Configuration

APP = App(
    id="fz",
    key=KEY,
    secret=SECRET,
    enable_watchlist_events=True,
    enable_subscription_count=True,
    max_presence_members=3,
)
# client events off, and sockets that neither sign in nor authorize are closed after 5 s
STRICT_APP = App(
    id="fz-strict",
    key="fz-strict-key",
    secret="fz-strict-secret",
    enable_client_messages=False,
    enable_user_authentication=True,
    user_authentication_timeout=5.0,
)
CONFIG = Config(server=ServerConfig(activity_timeout=20, pong_timeout=5), apps=(APP, STRICT_APP))

REST_STATUSES = {400, 413, 403, 404, 429, 503}


def check_sent(conn: FakeConnection, strict: bool = True) -> list[dict[str, Any]]:
    """Check and clear what `conn` was sent; returns the events."""
    events = []
    for m in conn.sent:
        ev = orjson.loads(m.payload)  # raises if the server sent invalid JSON
        check_event(ev, strict)
        events.append(ev)
    conn.sent.clear()
    return events


def check_closed(conn: FakeConnection) -> None:
    if not conn.closed:
        return
    code = conn.close_code
    assert code is not None and (4000 <= code <= 4399 or code in TRANSPORT_CLOSE_CODES), code
    assert isinstance(conn.close_reason, str)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def open_conn(h: PusherHandler, app: App) -> FakeConnection:
    conn = FakeConnection(app, now=h.clock())
    await h.open(conn)
    (ev,) = check_sent(conn)
    assert ev["event"] == "pusher:connection_established", ev
    return conn


async def observer(h: PusherHandler, app: App) -> FakeConnection:
    """A well-behaved socket on the channels the fuzzed one may join: it sees the broadcasts."""
    obs = await open_conn(h, app)
    for frame in (
        msg_frame({"event": "pusher:subscribe", "data": {"channel": "private-fz", "auth": AUTH}}),
        msg_frame(
            {
                "event": "pusher:subscribe",
                "data": {
                    "channel": "presence-fz",
                    "auth": AUTH,
                    "channel_data": '{"user_id":"obs","user_info":{"n":1}}',
                },
            }
        ),
    ):
        await h.on_text(obs, resolve(frame, obs.socket_id, app.key, app.secret))
    evs = check_sent(obs)
    assert [e["event"] for e in evs if "succeeded" in e["event"]] == [
        "pusher_internal:subscription_succeeded"
    ] * 2, evs
    return obs


async def run_frames(h: PusherHandler, clock: FakeClock, app: App, frames: list[Frame]) -> None:
    """Send `frames` on one socket (with an observer beside it) checking every reply, then
    the liveness and no-leak properties."""
    obs = await observer(h, app)
    conn = await open_conn(h, app)
    conns: list[FakeConnection] = [obs, conn]
    try:
        for frame in frames:
            if conn.closed:
                break
            was_closed = {id(c) for c in conns if c.closed}
            if frame[0] == "tick":
                clock.advance(frame[1])
                h.sweep()
            elif frame[0] == "binary":
                h.on_binary(conn)
            elif frame[0] == "burst":
                text = resolve(msg_frame(frame[1]), conn.socket_id, app.key, app.secret)
                for _ in range(frame[2]):
                    await h.on_text(conn, text)
            else:
                await h.on_text(conn, resolve(frame, conn.socket_id, app.key, app.secret))
            await settle()
            for c in conns:
                events = check_sent(c)
                check_closed(c)
                for ev in events:  # coverage, shown by --hypothesis-show-statistics
                    name = ev["event"]
                    if name == "pusher:error":
                        name += f" {ev['data']['code']}"
                    elif name.startswith("client-"):
                        name = "client event"
                    event(f"{'observer' if c is obs else 'socket'} got {name}"[:60])
                if c.closed and id(c) not in was_closed:
                    event(f"closed {c.close_code}")
                if c.closed and id(c) not in was_closed:
                    # the client is told why before the close
                    errs = [e for e in events if e["event"] == "pusher:error"]
                    assert errs and (errs[-1]["data"]["code"] or 4200) == c.close_code, events
        # liveness: the same socket if it is open, else a fresh one
        target = conn if not conn.closed else await open_conn(h, app)
        if target is not conn:
            conns.append(target)
        await h.on_text(target, PING)
        assert PONG in check_sent(target)
    finally:
        for c in conns:
            await h.on_close(c)
        await settle()
    await assert_no_state(h, app)


async def assert_no_state(h: PusherHandler, app: App) -> None:
    st_ = h.engine.hub.state(app)
    assert not st_.connections, st_.connections
    assert not st_.channels, list(st_.channels)
    assert not st_.users, list(st_.users)
    assert not st_.watchers, list(st_.watchers)
    assert await h.engine.channels(app) == {}
    assert await h.engine.connection_count(app) == 0
    assert await h.engine.online_users(app, ("u1", "u2", "obs", "fz-user")) == []


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[asyncio.Runner, PusherHandler, FakeClock]]:
    """One event loop and one handler for every example: a leak would accumulate."""
    clock = FakeClock()
    with asyncio.Runner() as runner:

        async def build() -> PusherHandler:
            return make_handler(CONFIG, clock)

        yield runner, runner.run(build()), clock


# --------------------------------------------------------------------------------------------
# WebSocket properties


@pytest.mark.slow  # (a few seconds to tens of seconds)
@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(frames=frame_lists, strict=st.integers(0, 5))
def test_inbound_frames(env, frames: list[Frame], strict: int) -> None:
    runner, h, clock = env
    app = STRICT_APP if strict == 0 else APP
    runner.run(run_frames(h, clock, app, frames))


@settings(max_examples=300, **FUZZ_SETTINGS)
@given(frames=deep_frames())
def test_deeply_nested_frames(env, frames: list[Frame]) -> None:
    runner, h, clock = env
    runner.run(run_frames(h, clock, APP, frames))


@pytest.mark.parametrize("depth", [252, 255, 400])
def test_deep_presence_user_info_is_refused(env, depth: int) -> None:
    """Found by this fuzzing: a signed presence user_info nested ~252+ levels deep could be
    stored but not encoded again. It is refused now (4305), and the socket goes on."""
    runner, h, clock = env
    cd = json.dumps({"user_id": "u1", "user_info": nested(depth, "list", None)})
    frame = msg_frame(
        {
            "event": "pusher:subscribe",
            "data": {"channel": "presence-fz", "auth": AUTH, "channel_data": cd},
        }
    )
    assert hits_known_bug_deep_user_info(frame)

    async def go() -> None:
        conn = await open_conn(h, APP)
        try:
            await h.on_text(conn, resolve(frame, conn.socket_id))
            events = check_sent(conn)
            assert events[-1]["event"] == "pusher:error"
            assert events[-1]["data"]["code"] == 4305
            assert "nested deeper" in events[-1]["data"]["message"]
        finally:
            await h.on_close(conn)
            await settle()

    runner.run(go())


# --------------------------------------------------------------------------------------------
# REST bodies against pushwire.api


def as_parsed_body(body: Any) -> tuple[bool, Any]:
    """What the HTTP layer hands to `api`: a JSON body re-parsed with the server's parser;
    (False, None) when it would already be refused with 400 there."""
    try:
        return True, loads_checked(json.dumps(body))
    except ValueError:
        return False, None


async def call_api(h: PusherHandler, call: tuple[Any, ...]) -> dict[str, Any]:
    engine, op = h.engine, call[0]
    if op == "trigger":
        return await api.trigger(engine, APP, call[1])
    if op == "trigger_batch":
        return await api.trigger_batch(engine, APP, call[1])
    if op == "channels":
        return await api.channels(engine, APP, call[1])
    if op == "channel":
        return await api.channel(engine, APP, call[1], call[2])
    if op == "users":
        return await api.users(engine, APP, call[1])
    return await api.terminate(engine, APP, call[1])


async def run_rest(calls: list[tuple[Any, ...]]) -> None:
    h = make_handler(CONFIG, FakeClock())  # fresh: cache channels keep what is triggered
    # subscribers and a signed-in user, so triggers are delivered and counts are non-zero
    obs = await observer(h, APP)
    signin = {
        "event": "pusher:signin",
        "data": {"user_data": '{"id":"u1","watchlist":["obs"]}', "auth": AUTH},
    }
    await h.on_text(obs, resolve(msg_frame(signin), obs.socket_id))
    for ch in ("fz", "cache-fz", "presence-cache-fz"):
        sub = {"event": "pusher:subscribe", "data": {"channel": ch, "auth": AUTH}}
        if ch.startswith("presence-"):
            sub["data"]["channel_data"] = '{"user_id":"obs"}'
        await h.on_text(obs, resolve(msg_frame(sub), obs.socket_id))
    check_sent(obs)
    for call in calls:
        if call[0] in ("trigger", "trigger_batch"):
            ok, body = as_parsed_body(call[1])
            if not ok:
                continue
            call = (call[0], body)
        try:
            result = await call_api(h, call)
        except api.ApiError as exc:
            assert exc.status in REST_STATUSES, (exc.status, exc.message)
            assert isinstance(exc.message, str)
            event(f"{call[0]} -> {exc.status}")
        else:
            assert isinstance(result, dict), result
            orjson.dumps(result)  # the HTTP layer renders it
            event(f"{call[0]} -> 200{' with info' if result else ''}")
        await settle()
        if any(e["event"] not in ("pusher:ping",) for e in check_sent(obs, strict=False)):
            event("delivered to a subscriber")  # valid JSON with a string event
        if obs.closed:  # terminate_connections of u1
            assert obs.close_code == 4009
            await h.on_close(obs)
            obs = await open_conn(h, APP)
    await h.on_close(obs)
    await settle()
    await assert_no_state(h, APP)


@pytest.mark.slow  # (a few seconds to tens of seconds)
@settings(max_examples=600, **FUZZ_SETTINGS)
@given(calls=st.lists(rest_calls, min_size=1, max_size=4))
def test_rest_bodies(env, calls: list[tuple[Any, ...]]) -> None:
    runner, _, _ = env
    runner.run(run_rest(calls))
