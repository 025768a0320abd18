"""Property-based fuzzing of a real `pushwire serve` process: random WebSocket frames and
handshakes, random signed REST requests (a few hundred cases, bounded and reproducible).

Properties: every text frame the server sends is JSON with a string `event` (well-formed
`pusher:error`s); a socket it closes gets a Pusher close code (4000..4399, after a
`pusher:error` with that code) or 1009 (frame too large); a socket left open still answers a
subscription and `pusher:ping` in order; REST answers are < 500 with a JSON `{"error": ...}`
for refusals; a fresh client connects and gets a pong after every example; nothing the
server logs is a traceback.

Strategies (frames, bodies) come from tests/helpers/fuzz_frames.py and fuzz_values.py. Each
example is one `asyncio.run` of a list of cases: hypothesis drives a sync test, so no event loop
or session outlives an example.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from yarl import URL

from pushwire.protocol.signing import sign_rest
from tests.conftest import TIMEOUT, running_server
from tests.helpers.fuzz_frames import (
    PING,
    PONG,
    TRANSPORT_CLOSE_CODES,
    Frame,
    check_event,
    deep_frames,
    frame_lists,
    resolve,
)
from tests.helpers.fuzz_values import (
    FUZZ_SETTINGS,
    KEY,
    SECRET,
    Huge,
    batch_bodies,
    channel_names,
    huge_strings,
    query_dicts,
    small_text,
    strings,
    trigger_bodies,
)

pytestmark = pytest.mark.slow

APP_ID = "fz"
MAX_FRAME = 4096
CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0
max_frame_size = {MAX_FRAME}
max_request_body = 200000

[[apps]]
id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
enable_watchlist_events = true
enable_subscription_count = true
max_presence_members = 3
"""
REST_OK = {200, 400, 404, 413}  # never 401 (every request is signed) nor a 5xx
_probe = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("fuzz"), CONFIG) as s:
        yield s


# --------------------------------------------------------------------------------------------
# Cases

handshakes = st.tuples(
    st.just("handshake"),
    st.one_of(
        st.just(KEY),
        st.just(KEY),
        st.sampled_from(["nope", "fz-key ", "FZ-KEY", "\u00fc", "a" * 300]),
        small_text,
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "protocol": st.one_of(
                st.just("7"),
                st.just("7"),
                st.sampled_from(["5", "4", "8", "", "07", "7.0", "\u0667", "99999999999999999999"]),
                small_text,
            ),
            "version": st.one_of(
                st.sampled_from(["8.6.0", "7.0.0-rc.1", "", "x" * 70, "1.0 beta", "v1"]),
                small_text,
            ),
            "client": small_text,
            "flash": st.sampled_from(["false", "true"]),
        },
    ),
)
accepted_handshakes = st.tuples(  # accepted, with odd but valid extras
    st.just("handshake"),
    st.just(KEY),
    st.fixed_dictionaries(
        {"protocol": st.sampled_from(["7", "5", "6"])},
        optional={
            "version": st.sampled_from(["8.6.0", "7.0.0-rc.1", "v1", "10.1.5+build.7"]),
            "client": small_text,
            "extra": small_text,
        },
    ),
)
rest_bodies = st.one_of(
    trigger_bodies.map(lambda b: ("json", b)),
    st.tuples(st.just("raw"), st.one_of(strings, st.binary(max_size=64))),
)
rest_requests = st.one_of(
    st.tuples(st.just("events"), rest_bodies),
    st.tuples(st.just("batch_events"), batch_bodies.map(lambda b: ("json", b))),
    st.tuples(st.just("channels"), query_dicts),
    st.tuples(st.just("channel"), channel_names, query_dicts),
    st.tuples(st.just("users"), channel_names),
    st.tuples(st.just("terminate"), st.one_of(st.sampled_from(["u1", "obs"]), small_text)),
)
server_cases = st.one_of(
    st.tuples(st.just("ws"), frame_lists),
    st.tuples(st.just("ws"), frame_lists),
    st.tuples(st.just("ws"), deep_frames()),
    st.tuples(
        st.just("ws"),  # beyond max_frame_size
        huge_strings().map(
            lambda s: [("text", Huge(json.dumps({"event": "client-x", "data": s})))]
        ),
    ),
    handshakes,
    accepted_handshakes,
    st.tuples(st.just("rest"), rest_requests),
    st.tuples(st.just("rest"), rest_requests),
)


# --------------------------------------------------------------------------------------------
# Running cases


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any] | None:
    """The next text frame as JSON (checked), or None when the server closed the socket."""
    msg = await ws.receive(timeout=TIMEOUT)
    if msg.type is aiohttp.WSMsgType.TEXT:
        ev = orjson.loads(msg.data)
        check_event(ev)
        return ev
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
    ), msg
    return None


def check_close(ws: aiohttp.ClientWebSocketResponse, last: dict[str, Any] | None) -> None:
    code = ws.close_code
    assert code is not None and (4000 <= code <= 4399 or code in TRANSPORT_CLOSE_CODES), code
    if 4000 <= code <= 4399:  # the client is told why first
        assert last is not None and last["event"] == "pusher:error", last
        assert (last["data"]["code"] or 4200) == code, (last, code)


async def ws_case(session: aiohttp.ClientSession, srv: Any, frames: list[Frame]) -> None:
    async with session.ws_connect(srv.ws_url(KEY), timeout=aiohttp.ClientWSTimeout(TIMEOUT)) as ws:
        hello = await receive_json(ws)
        assert hello is not None and hello["event"] == "pusher:connection_established", hello
        socket_id = orjson.loads(hello["data"])["socket_id"]
        probe = f"fzprobe-{next(_probe)}"
        oversized = False  # a frame beyond max_frame_size was sent: the server closes (1009)
        try:
            for frame in frames:
                if frame[0] == "tick":  # the real clock cannot be advanced
                    continue
                if frame[0] == "binary":
                    await ws.send_bytes(b"\x00\x01")
                    continue
                if frame[0] == "burst":
                    out = resolve(("msg", frame[1], False, True), socket_id)
                    count = frame[2]
                else:
                    out, count = resolve(frame, socket_id), 1
                raw = out if isinstance(out, bytes) else out.encode()
                for _ in range(count):
                    # known before sending: the server may close mid-write (ConnectionError)
                    oversized = len(raw) > MAX_FRAME
                    if isinstance(out, bytes):
                        await ws.send_bytes(out)  # raw bytes go as a binary frame
                    else:
                        await ws.send_str(out)
                    if oversized:
                        # stop writing: data sent after the server's close makes its TCP
                        # stack reset the connection
                        break
                if oversized:
                    break
            else:
                # every reply to the frames above comes before the probe's, in order
                msg = {"event": "pusher:subscribe", "data": {"channel": probe}}
                await ws.send_str(json.dumps(msg))
                await ws.send_str(PING)
        except ConnectionError:  # the server closed the socket meanwhile
            pass
        last = None
        got_probe = False
        async with asyncio.timeout(TIMEOUT):
            while True:
                ev = await receive_json(ws)
                if ev is None:
                    event(f"ws closed {ws.close_code}")
                    if oversized:
                        # 1009; or 1006 when the server closed while the client was still
                        # writing the frame: the unread data makes the server's TCP stack
                        # reset the connection, and the close frame is lost with it
                        assert ws.close_code in (1006, 1009), ws.close_code
                    else:
                        check_close(ws, last)
                    return
                last = ev
                if ev.get("channel") == probe and ev["event"].endswith("subscription_succeeded"):
                    got_probe = True
                elif ev == PONG and got_probe:
                    return


async def handshake_case(
    session: aiohttp.ClientSession, srv: Any, key: str, query: dict[str, str]
) -> None:
    url = URL.build(scheme="http", host="127.0.0.1", port=srv.port, path=f"/app/{key}", query=query)
    try:
        ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:  # e.g. no route for that key
        assert exc.status < 500, exc
        event(f"handshake refused {exc.status}")
        return
    async with ws:
        first = await receive_json(ws)
        assert first is not None
        if first["event"] == "pusher:connection_established":
            event("handshake accepted")
            await ws.send_str(PING)
            while (ev := await receive_json(ws)) != PONG:
                assert ev is not None
            return
        assert first["event"] == "pusher:error", first
        assert await receive_json(ws) is None
        check_close(ws, first)
        event(f"handshake closed {ws.close_code}")


def rest_target(req: tuple[Any, ...]) -> tuple[str, str, dict[str, str], bytes]:
    """Method, raw path, query and body of a REST case."""
    base = f"/apps/{APP_ID}"
    kind = req[0]
    if kind in ("events", "batch_events"):
        how, body = req[1]
        raw = json.dumps(body) if how == "json" else body
        raw = raw.encode() if isinstance(raw, str) else raw
        return "POST", f"{base}/{kind}", {}, raw
    if kind == "channels":
        return "GET", f"{base}/channels", req[1], b""
    if kind == "channel":
        return "GET", f"{base}/channels/{quote(req[1], safe='')}", req[2], b""
    if kind == "users":
        return "GET", f"{base}/channels/{quote(req[1], safe='')}/users", {}, b""
    return "POST", f"{base}/users/{quote(req[1], safe='')}/terminate_connections", {}, b""


async def rest_case(session: aiohttp.ClientSession, srv: Any, req: tuple[Any, ...]) -> None:
    method, raw_path, params, body = rest_target(req)
    # keep fuzzed parameters from colliding with the signature's own
    params = {k: v for k, v in params.items() if not k.lower().startswith(("auth_", "body_md5"))}
    url = URL(srv.http).with_path(raw_path, encoded=True)
    query = sign_rest(KEY, SECRET, method, url.raw_path, params, body)
    url = url.with_query(query)
    headers = {"Content-Type": "application/json"}
    # aiohttp warns about bodies over 1 MiB given as bytes (a ResourceWarning: an error here)
    data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > 2**20 else body
    async with session.request(method, url, data=data, headers=headers) as r:
        text = await r.read()
        assert r.status in REST_OK, (r.status, text[:500], req)
        event(f"rest {req[0]} {r.status}")
        if r.status == 200:
            assert isinstance(orjson.loads(text), dict), text[:500]
        elif r.content_type == "application/json":
            err = orjson.loads(text)
            assert isinstance(err, dict) and isinstance(err.get("error"), str), err


async def alive(session: aiohttp.ClientSession, srv: Any) -> None:
    """A fresh client connects and gets a pong."""
    async with session.ws_connect(srv.ws_url(KEY), timeout=aiohttp.ClientWSTimeout(TIMEOUT)) as ws:
        hello = await receive_json(ws)
        assert hello is not None and hello["event"] == "pusher:connection_established"
        await ws.send_str(PING)
        assert await receive_json(ws) == PONG


OBSERVED = ("fz", "cache-fz", "private-fz", "presence-fz")


async def open_observer(session: aiohttp.ClientSession, srv: Any) -> Any:
    """A well-behaved socket on the channels the cases publish to, for the whole example."""
    ws = await session.ws_connect(srv.ws_url(KEY), timeout=aiohttp.ClientWSTimeout(TIMEOUT))
    hello = await receive_json(ws)
    assert hello is not None and hello["event"] == "pusher:connection_established"
    socket_id = orjson.loads(hello["data"])["socket_id"]
    for channel in OBSERVED:
        data = {"channel": channel, "auth": "$AUTH"}
        if channel.startswith("presence-"):
            data["channel_data"] = '{"user_id":"obs"}'
        await ws.send_str(
            resolve(("msg", {"event": "pusher:subscribe", "data": data}, 0, 1), socket_id)
        )
    return ws


async def drain_observer(ws: Any) -> None:
    """Everything the observer was sent is well-formed, and it is still served."""
    probe = f"fzprobe-{next(_probe)}"
    await ws.send_str(json.dumps({"event": "pusher:subscribe", "data": {"channel": probe}}))
    await ws.send_str(PING)
    got_probe = False
    async with asyncio.timeout(TIMEOUT):
        while True:
            ev = await receive_json(ws)
            assert ev is not None, ws.close_code  # nothing closes a well-behaved socket
            if ev.get("channel") in OBSERVED and not ev["event"].startswith("pusher"):
                event("observer got a channel event")
            if ev.get("channel") == probe and ev["event"].endswith("subscription_succeeded"):
                got_probe = True
            elif ev == PONG and got_probe:
                return


async def run_cases(srv: Any, cases: list[tuple[Any, ...]]) -> None:
    async with aiohttp.ClientSession() as session:
        observer = await open_observer(session, srv)
        try:
            for case in cases:
                event(f"case {case[0]}")
                if case[0] == "ws":
                    await ws_case(session, srv, case[1])
                elif case[0] == "handshake":
                    await handshake_case(session, srv, case[1], case[2])
                else:
                    await rest_case(session, srv, case[1])
            await drain_observer(observer)
        finally:
            await observer.close()
        await alive(session, srv)


@settings(max_examples=40, **FUZZ_SETTINGS)
@given(cases=st.lists(server_cases, min_size=4, max_size=14))
def test_server_fuzz(srv, cases: list[tuple[Any, ...]]) -> None:
    seen = srv.log.stat().st_size
    asyncio.run(run_cases(srv, cases))
    with open(srv.log) as fh:  # what this example made the server log
        fh.seek(seen)
        new = fh.read()
    assert "Traceback" not in new, new[-3000:]
