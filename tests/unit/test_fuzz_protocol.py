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

Strategies and the frame runner are reused by tests/server/test_fuzz_server.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pushwire import api
from pushwire.apps.model import App
from pushwire.config import Config, ServerConfig
from pushwire.handler import PusherHandler
from pushwire.protocol.channels import channel_type
from pushwire.protocol.frames import loads_checked
from pushwire.protocol.signing import (
    channel_string_to_sign,
    sign_auth,
    user_string_to_sign,
)
from pushwire.testing import FakeClock, FakeConnection, make_handler

# --------------------------------------------------------------------------------------------
# Configuration

KEY, SECRET = "fz-key", "fz-secret"
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

PING = '{"event":"pusher:ping","data":{}}'
PONG = {"event": "pusher:pong", "data": {}}
# system events whose `data` is an object, and those whose data is a JSON string. Other events
# are channel events: client events carry the data their sender gave, and the REST API may
# trigger any name with any data string (even `pusher:x` names), so only their shape is checked
OBJECT_DATA_EVENTS = {"pusher:error", "pusher:ping", "pusher:pong", "pusher:signin_success"}
STRING_DATA_EVENTS = {
    "pusher:connection_established",
    "pusher:subscription_error",
    "pusher_internal:subscription_succeeded",
    "pusher_internal:member_added",
    "pusher_internal:member_removed",
    "pusher_internal:subscription_count",
    "pusher_internal:watchlist_events",
}
TRANSPORT_CLOSE_CODES = {1000, 1009}  # normal close; frame larger than max_frame_size
REST_STATUSES = {400, 413, 403, 404, 429, 503}

# placeholders replaced, when a frame is sent, by a signature for the receiving socket
AUTH = "$AUTH"  # valid
AUTH_OTHER_SOCKET = "$AUTH_OTHER_SOCKET"  # valid for another socket id (a replay)
AUTH_WRONG_SECRET = "$AUTH_WRONG_SECRET"

FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}

# --------------------------------------------------------------------------------------------
# Strategies: JSON values

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00\x01\x1f\x7f",
    "\t\r\n",
    "\u2028\u2029",
    "\ufeff",
    "\ufffe\uffff",
    "\U0010ffff",
    "\U0001f600\u200d\U0001f600",
    "e\u0301\u0301\u0301",
    "\u202e\u202d",
    "\\",
    '"',
    "\\u0000",
    '\\"',
    "{}",
    "null",
    "../../etc/passwd",
    "%00%2F",
    "<script>",
    "private-fz",
    "presence-fz",
    "#server-to-user-u1",
    "fz-key:",
]


class Huge(str):
    """A long string that shows itself short (in hypothesis' reports of failing examples)."""

    __slots__ = ()

    def __repr__(self) -> str:
        if self == self[:1] * len(self):
            return f"{self[:1]!r} * {len(self)}"
        return f"Huge({self[:60]!r} + ... {len(self)} characters)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def huge_strings() -> st.SearchStrategy[str]:
    """Strings around the limits (200 names, 10240 data, 262144 frames) and beyond."""
    return st.builds(
        lambda ch, n: Huge(ch * n),
        st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "[", '"', "\\"]),
        st.sampled_from([128, 129, 200, 201, 1024, 1025, 10240, 10241, 70_000, 270_000]),
    )


_SPECIAL_CHARS = (
    "\x80\x85\x9f\xa0\xad\xdf\xe9\xff\u0130\u0301\u0361\u0627\u05d0\u0661\u0e01\u1680"
    "\u180e\u200b\u200d\u200e\u202e\u2028\u2029\u2060\u212a\u3000\u4e2d\ufb01\ufdd0\ufeff"
    "\uff10\ufffd\ufffe\uffff\U0001d400\U0001f600\U000e0001\U0010ffff"
)
# 256 characters, one per byte: ASCII (controls included), odd ones above, and a spread of
# code points from the rest of the BMP and beyond (never a surrogate)
CHAR_TABLE = (
    [chr(i) for i in range(128)]
    + list(_SPECIAL_CHARS)
    + [chr(0x100 + (i * 7919) % 0xD700) for i in range(90 - len(_SPECIAL_CHARS) + 38)]
)
assert len(CHAR_TABLE) == 256


def _from_table(raw: bytes) -> str:
    return "".join(CHAR_TABLE[b] for b in raw)


# hypothesis' text() draws character by character (slow); bytes mapped through the table
# cost one draw. Both never contain surrogates.
small_text = st.one_of(
    st.binary(max_size=24).map(_from_table),
    st.binary(max_size=24).map(_from_table),
    st.binary(max_size=24).map(_from_table),
    st.text(max_size=8),
)
strings = st.one_of(small_text, small_text, st.sampled_from(ODD_STRINGS), huge_strings())
extreme_ints = st.sampled_from(
    [
        0,
        -1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**30,
        -(10**400),
    ]
)
extreme_floats = st.sampled_from([-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308])
numbers = st.one_of(
    st.integers(),
    extreme_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    extreme_floats,
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(small_text, st.sampled_from(ODD_STRINGS)), children, max_size=5),
    ),
    max_leaves=6,
)

# --------------------------------------------------------------------------------------------
# Strategies: Pusher messages

VALID_CHANNELS = [
    "fz",
    "private-fz",
    "presence-fz",
    "private-encrypted-fz",
    "cache-fz",
    "private-cache-fz",
    "presence-cache-fz",
    "private-encrypted-cache-fz",
    "#server-to-user-u1",
    "#server-to-user-obs",
]
ODD_CHANNELS = [
    "private-",
    "presence-",
    "cache-",
    "private-encrypted-",
    "presence-cache-",
    "#server-to-user-",
    "#server-to-user-a b",
    "#fz",
    "a b",
    "fz\n",
    "\nfz",
    "fz\x00",
    "\u00fc",
    "a" * 200,
    "a" * 201,
    "private-" + "a" * 192,
    "private-" + "a" * 193,
    "presence-" + "p" * 300,
    "*",
    "private-fz,private-fz2",
    "PRIVATE-fz",
]
channel_names = st.one_of(
    st.sampled_from(VALID_CHANNELS),
    st.sampled_from(VALID_CHANNELS),
    st.sampled_from(ODD_CHANNELS),
    st.builds(  # valid characters (or empty) after any prefix
        str.__add__,
        st.sampled_from(
            ["", "private-", "presence-", "cache-", "private-encrypted-", "#server-to-user-"]
        ),
        st.text(alphabet="-aZ09_=@,.;", max_size=12),
    ),
    strings,
)
channel_values = st.one_of(channel_names, channel_names, channel_names, json_values)
user_ids = st.one_of(
    st.sampled_from(["u1", "u2", "obs", "fz-user", "", "a b", "x" * 128, "x" * 129, "#u"]),
    numbers,
    strings,
    json_values,
)
auth_values = st.one_of(
    st.just(AUTH),
    st.just(AUTH),
    st.just(AUTH),
    st.sampled_from([AUTH_OTHER_SOCKET, AUTH_WRONG_SECRET]),
    st.sampled_from(["", ":", f"{KEY}:", f"{KEY}:{'0' * 64}", f"{KEY}:{'g' * 64}", "x" * 300]),
    strings,
    json_values,
)
member_objects = st.fixed_dictionaries(
    {},
    optional={
        "user_id": user_ids,
        "user_info": json_values,
        "extra": json_values,
    },
)
channel_data_values = st.one_of(
    member_objects.map(json.dumps),
    member_objects.map(json.dumps),
    member_objects.map(lambda m: json.dumps(m)[:-1]),  # truncated
    st.sampled_from(["{", "NaN", '{"user_id":NaN}', '{"user_id":1e400}', "[]", '""']),
    strings,
    json_values,
)
watchlists = st.one_of(
    st.lists(st.sampled_from(["u1", "u2", "obs", "w"]), max_size=4),
    st.lists(st.sampled_from(["u1", "u2", "w", "x"]), min_size=99, max_size=103),
    json_values,
)
user_objects = st.fixed_dictionaries(
    {},
    optional={"id": user_ids, "watchlist": watchlists, "user_info": json_values},
)
user_data_values = st.one_of(
    user_objects.map(json.dumps),
    user_objects.map(json.dumps),
    st.sampled_from(["{", '{"id":"u1"', "[]", '"u1"']),
    strings,
    json_values,
)

subscribe_data = st.one_of(
    st.fixed_dictionaries(
        {"channel": channel_values},
        optional={"auth": auth_values, "channel_data": channel_data_values, "x": json_values},
    ),
    json_values,
)
unsubscribe_data = st.one_of(
    st.fixed_dictionaries({}, optional={"channel": channel_values}),
    json_values,
)
signin_data = st.one_of(
    st.fixed_dictionaries({}, optional={"user_data": user_data_values, "auth": auth_values}),
    json_values,
)
client_event_names = st.one_of(
    st.sampled_from(["client-x", "client-", "client-" + "e" * 193, "client-" + "e" * 250]),
    small_text.map(lambda s: "client-" + s),
)
other_event_names = st.one_of(
    st.sampled_from(
        [
            "pusher:pong",
            "pusher:error",
            "pusher:connection_established",
            "pusher_internal:subscription_succeeded",
            "pusher_internal:member_added",
            "pusher:cache_miss",
            "PUSHER:PING",
            "pusher:",
            "",
        ]
    ),
    strings,
)


@st.composite
def pusher_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message with a Pusher shape: right or wrong event, data, channel and extras."""
    kind = draw(
        st.sampled_from(["subscribe", "subscribe", "unsubscribe", "signin", "ping", "client"])
        | st.just("client")
        | st.just("other")
    )
    msg: dict[str, Any]
    if kind == "subscribe":
        msg = {"event": "pusher:subscribe", "data": draw(subscribe_data)}
    elif kind == "unsubscribe":
        msg = {"event": "pusher:unsubscribe", "data": draw(unsubscribe_data)}
    elif kind == "signin":
        msg = {"event": "pusher:signin", "data": draw(signin_data)}
    elif kind == "ping":
        msg = {"event": "pusher:ping", "data": draw(st.one_of(st.just({}), json_values))}
    elif kind == "client":
        msg = {
            "event": draw(client_event_names),
            "channel": draw(
                st.one_of(st.sampled_from(["private-fz", "presence-fz", "fz"]), channel_values)
            ),
            "data": draw(json_values),
        }
    else:
        msg = {"event": draw(other_event_names), "data": draw(json_values)}
    if draw(st.integers(0, 9)) == 0:
        del msg["data"]
    if draw(st.integers(0, 9)) == 0:  # an event that is not a string
        msg["event"] = draw(json_values)
    if draw(st.integers(0, 7)) == 0:
        msg[draw(st.sampled_from(["channel", "user_id", "socket_id", "extra"]))] = draw(json_values)
    return msg


# well-formed and correctly signed (the server may still refuse some: presence limit, not
# signed in, rate limit...); mixed with the wrong ones they reach the deeper states
valid_messages = st.one_of(
    st.builds(
        lambda ch: {"event": "pusher:subscribe", "data": {"channel": ch, "auth": AUTH}},
        st.sampled_from([c for c in VALID_CHANNELS if not c.startswith("presence-")]),
    ),
    st.builds(
        lambda ch, uid, info: {
            "event": "pusher:subscribe",
            "data": {
                "channel": ch,
                "auth": AUTH,
                "channel_data": json.dumps({"user_id": uid, "user_info": info}),
            },
        },
        st.sampled_from(["presence-fz", "presence-cache-fz", "presence-fz2"]),
        st.sampled_from(["u1", "u2", "u3", "u4", 7, 7.5]),
        json_values,
    ),
    st.builds(
        lambda uid, watchlist: {
            "event": "pusher:signin",
            "data": {"user_data": json.dumps({"id": uid, "watchlist": watchlist}), "auth": AUTH},
        },
        st.sampled_from(["u1", "u2", "obs"]),
        st.lists(st.sampled_from(["u1", "u2", "obs", "w"]), max_size=3),
    ),
    st.builds(
        lambda name, ch, data: {"event": name, "channel": ch, "data": data},
        client_event_names,
        st.sampled_from(["private-fz", "presence-fz", "private-encrypted-fz", "presence-fz2"]),
        json_values,
    ),
    st.builds(
        lambda ch: {"event": "pusher:unsubscribe", "data": {"channel": ch}},
        st.sampled_from(VALID_CHANNELS),
    ),
)

client_events = st.builds(
    lambda name, ch, data: {"event": name, "channel": ch, "data": data},
    st.sampled_from(["client-x", "client-typing"]) | client_event_names,
    st.sampled_from(["private-fz", "presence-fz"]),
    st.one_of(json_values, huge_strings()),
)

RAW_TEXTS = [
    "",
    " ",
    "{",
    "}",
    "[]",
    "{}",
    "null",
    "0",
    '""',
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e999",
    "123456789012345678901234567890",
    '{"event":}',
    '{"event":"pusher:ping"',
    '{"event":"pusher:ping","data":{}}garbage',
    '{"event":"pusher:ping","data":{}}{"event":"pusher:ping","data":{}}',
    '\ufeff{"event":"pusher:ping","data":{}}',
    '{"event":"pusher:ping","event":"pusher:subscribe","data":{"channel":"fz"}}',
    '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"fz\\"}"}',
    '{"event":"pusher:subscribe","data":"{\\"channel\\":"}',
    '{"event":"\\u0000"}',
    '{"event":"\\ud800"}',
    '{"event":"\\udc00\\ud800"}',
    '{"event":"pusher:ping","data":{}} ',
    '\'{"event":"pusher:ping"}\'',
    '{event:"pusher:ping"}',
    '{"event":"pusher:ping",}',
    "\x00",
]

Frame = tuple[Any, ...]
# ("msg", message, data double-encoded, ensure_ascii) | ("text", str) | ("bytes", bytes)
# | ("binary",) | ("tick", seconds): the clock advances and the heartbeat sweep runs
# | ("burst", message, n): the message n times in a row
frames = st.one_of(
    st.tuples(st.just("msg"), client_events, st.booleans(), st.booleans()),
    # the same message sent 2 to 15 times at once (the client event rate is 10 per second)
    st.tuples(st.just("burst"), client_events, st.integers(2, 15)),
    st.tuples(st.just("msg"), valid_messages, st.booleans(), st.booleans()),
    st.tuples(st.just("msg"), valid_messages, st.booleans(), st.booleans()),
    st.tuples(st.just("msg"), pusher_messages(), st.booleans(), st.booleans()),
    st.tuples(st.just("msg"), pusher_messages(), st.booleans(), st.booleans()),
    st.tuples(st.just("msg"), pusher_messages(), st.booleans(), st.booleans()),
    st.tuples(st.just("text"), st.one_of(st.text(max_size=64), st.sampled_from(RAW_TEXTS))),
    st.tuples(st.just("text"), json_values.map(lambda v: Huge(json.dumps(v)))),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("binary")),
    st.tuples(st.just("tick"), st.sampled_from([0.05, 1.0, 4.9, 5.0, 20.0, 25.0, 60.0])),
)


def msg_frame(msg: dict[str, Any], double: bool = False, ascii_only: bool = True) -> Frame:
    return ("msg", msg, double, ascii_only)


# half the lists start subscribed to a private and a presence channel, so that client events
# (and whatever follows) reach the observer
SETUP: list[Frame] = [
    msg_frame({"event": "pusher:subscribe", "data": {"channel": "private-fz", "auth": AUTH}}),
    msg_frame(
        {
            "event": "pusher:subscribe",
            "data": {"channel": "presence-fz", "auth": AUTH, "channel_data": '{"user_id":"u1"}'},
        }
    ),
]
frame_lists = st.one_of(
    st.lists(frames, min_size=1, max_size=6),
    st.lists(frames, min_size=1, max_size=5).map(lambda fs: SETUP + fs),
)


def _nested(depth: int, pattern: str, leaf: Any) -> Any:
    v = leaf
    for i in range(depth):
        if pattern == "list" or (pattern == "mixed" and i % 2):
            v = [v]
        elif pattern == "wide":
            v = [0, v, {"k": None}]
        else:
            v = {"k": v}
    return v


deep_values = st.builds(
    _nested,
    st.integers(1, 400),
    st.sampled_from(["list", "dict", "mixed", "wide"]),
    st.sampled_from([None, 0, "x", {}, []]),
)


@st.composite
def deep_frames(draw: st.DrawFn) -> list[Frame]:
    """Nesting up to 400 levels: as the whole frame (balanced or not), as the data of a
    subscription, a client event, a sign-in and a presence member's user_info."""
    v = draw(deep_values)
    kind = draw(
        st.sampled_from(
            ["raw", "open", "subscribe", "client", "channel_data", "user_data", "auth", "event"]
        )
    )
    if kind == "raw":
        return [("text", json.dumps(v))]
    if kind == "open":  # unbalanced: openers, maybe a few closers, maybe garbage
        depth = draw(st.integers(1, 1100))
        opener = draw(st.sampled_from(["[", '{"a":', "[1,", '{"event":"client-x","data":[']))
        tail = draw(st.sampled_from(["", "]", "]]]", "}", "x", "]" * 1100]))
        return [("text", Huge(opener * depth + tail))]
    if kind == "subscribe":
        return [msg_frame({"event": "pusher:subscribe", "data": {"channel": "fz", "x": v}})]
    if kind == "client":
        sub = {"event": "pusher:subscribe", "data": {"channel": "private-fz", "auth": AUTH}}
        ev = {"event": "client-deep", "channel": "private-fz", "data": v}
        return [msg_frame(sub), msg_frame(ev, draw(st.booleans()))]
    if kind == "channel_data":
        cd = json.dumps({"user_id": draw(st.sampled_from(["u1", "u2"])), "user_info": v})
        data = {"channel": "presence-fz", "auth": AUTH, "channel_data": cd}
        return [msg_frame({"event": "pusher:subscribe", "data": data}, draw(st.booleans()))]
    if kind == "user_data":
        ud = json.dumps({"id": "u1", "user_info": v, "watchlist": ["u2"]})
        return [msg_frame({"event": "pusher:signin", "data": {"user_data": ud, "auth": AUTH}})]
    if kind == "auth":
        data = {"channel": "private-fz", "auth": v}
        return [msg_frame({"event": "pusher:subscribe", "data": data})]
    return [msg_frame({"event": v, "data": {}})]


# --------------------------------------------------------------------------------------------
# Running frames and checking what comes back


def _signature(socket_id: str, msg: dict[str, Any], data: dict[str, Any], secret: str) -> str:
    if msg.get("event") == "pusher:signin":
        ud = data.get("user_data")
        return sign_auth(KEY, secret, user_string_to_sign(socket_id, str(ud)))
    channel = data.get("channel")
    cd = data.get("channel_data")
    if not (isinstance(channel, str) and channel_type(channel).presence and isinstance(cd, str)):
        cd = None
    return sign_auth(KEY, secret, channel_string_to_sign(socket_id, str(channel), cd))


def resolve(frame: Frame, socket_id: str, key: str = KEY, secret: str = SECRET) -> Any:
    """The text (or bytes) a frame sends on the socket `socket_id`; None for binary/tick."""
    if frame[0] in ("text", "bytes"):
        return frame[1]
    if frame[0] != "msg":
        return None
    _, msg, double, ascii_only = frame
    msg = dict(msg)
    data = msg.get("data")
    if isinstance(data, dict):
        data = dict(data)
        auth = data.get("auth")
        if auth == AUTH:
            data["auth"] = _signature(socket_id, msg, data, secret).replace(KEY, key, 1)
        elif auth == AUTH_OTHER_SOCKET:
            data["auth"] = _signature("1.2", msg, data, secret).replace(KEY, key, 1)
        elif auth == AUTH_WRONG_SECRET:
            data["auth"] = _signature(socket_id, msg, data, "not-the-secret")
        msg["data"] = json.dumps(data, ensure_ascii=ascii_only) if double else data
    return json.dumps(msg, ensure_ascii=ascii_only)


def hits_known_bug_deep_user_info(frame: Frame) -> bool:
    """A correctly signed presence subscription whose user_info is nested too deeply to be
    encoded again inside a member list (it was a bug, fixed: such user_info is refused)."""
    if frame[0] != "msg" or frame[1].get("event") != "pusher:subscribe":
        return False
    data = frame[1].get("data")
    if not isinstance(data, dict) or data.get("auth") != AUTH:
        return False
    channel, cd = data.get("channel"), data.get("channel_data")
    if not (isinstance(channel, str) and channel.startswith("presence-") and isinstance(cd, str)):
        return False
    try:
        parsed = orjson.loads(cd)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(parsed, dict) or "user_info" not in parsed:
        return False
    try:
        orjson.dumps({"presence": {"hash": {"u": parsed["user_info"]}}})
    except orjson.JSONEncodeError:
        return True
    return False


def check_event(ev: Any, strict: bool = True) -> None:
    """One frame a client receives: a JSON object with a string event, well-formed errors.
    Not `strict`: the REST API may trigger events with any name (even `pusher:error`) and any
    data, so only the shape of the frame is checked."""
    assert isinstance(ev, dict), ev
    event = ev.get("event")
    assert isinstance(event, str), ev
    if not strict:
        return
    if event == "pusher:error":
        data = ev.get("data")
        assert isinstance(data, dict), ev
        assert set(data) == {"code", "message"}, ev
        code = data["code"]
        assert code is None or (
            isinstance(code, int) and not isinstance(code, bool) and 4000 <= code <= 4399
        ), ev
        assert isinstance(data["message"], str), ev
    elif event in OBJECT_DATA_EVENTS:
        assert isinstance(ev.get("data"), dict), ev
    elif event in STRING_DATA_EVENTS:
        assert isinstance(ev.get("data"), str), ev
        inner = orjson.loads(ev["data"])
        if event == "pusher:subscription_error":
            assert isinstance(ev.get("channel"), str), ev
            assert isinstance(inner, dict) and isinstance(inner.get("status"), int), ev
            assert isinstance(inner.get("error"), str), ev


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
    cd = json.dumps({"user_id": "u1", "user_info": _nested(depth, "list", None)})
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

socket_ids = st.one_of(
    st.sampled_from(["1.2", "123.456", "1.", ".2", "1.2.3", "a.b", "", "1.2\n", "\u0661.\u0662"]),
    json_values,
)
info_strings = st.sampled_from(
    [
        "",
        "user_count",
        "subscription_count",
        "user_count,subscription_count",
        "cache",
        "subscription_count,cache",
        " user_count , ",
        ",,",
        "members",
    ]
)
info_values = st.one_of(info_strings, info_strings, json_values)
event_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["ev", "", "e" * 200, "e" * 201]), json_values),
        "data": st.one_of(json_values, huge_strings(), deep_values),
        "channel": channel_values,
        "channels": st.one_of(
            st.lists(channel_names, max_size=4),
            st.lists(st.sampled_from(VALID_CHANNELS), min_size=1, max_size=4, unique=True),
            st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=100, max_size=102),
            json_values,
        ),
        "socket_id": socket_ids,
        "info": info_values,
    },
)
# well-formed events (some still refused: 413, too many channels, user_count on a channel
# that is not a presence channel...)
valid_event_bodies = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["ev", "my-event", "client-x", "pusher:x"]),
        "data": st.one_of(json_values.map(json.dumps), json_values, huge_strings()),
    },
    optional={"socket_id": st.sampled_from(["1.2", "123.456"]), "info": info_strings},
).flatmap(
    lambda body: st.one_of(
        st.sampled_from(VALID_CHANNELS).map(lambda c: {**body, "channel": c}),
        st.lists(st.sampled_from(VALID_CHANNELS), min_size=1, max_size=4, unique=True).map(
            lambda cs: {**body, "channels": cs}
        ),
    )
)
event_bodies = st.one_of(event_bodies, valid_event_bodies, valid_event_bodies)
batch_bodies = st.one_of(
    st.fixed_dictionaries(
        {"batch": st.one_of(st.lists(event_bodies, max_size=11), json_values)},
        optional={"x": json_values},
    ),
    json_values,
)
trigger_bodies = st.one_of(event_bodies, event_bodies, json_values)
query_dicts = st.dictionaries(
    st.one_of(st.sampled_from(["filter_by_prefix", "info", "x"]), small_text),
    st.one_of(
        st.sampled_from(["presence-", "private-", "", "user_count", "subscription_count,cache"]),
        info_strings,
        small_text,
    ),
    max_size=3,
)
rest_calls = st.one_of(
    st.tuples(st.just("trigger"), trigger_bodies),
    st.tuples(st.just("trigger_batch"), batch_bodies),
    st.tuples(st.just("channels"), query_dicts),
    st.tuples(st.just("channel"), channel_names, query_dicts),
    st.tuples(st.just("users"), channel_names),
    st.tuples(st.just("terminate"), st.one_of(st.sampled_from(["u1", "obs", ""]), strings)),
)


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


@settings(max_examples=600, **FUZZ_SETTINGS)
@given(calls=st.lists(rest_calls, min_size=1, max_size=4))
def test_rest_bodies(env, calls: list[tuple[Any, ...]]) -> None:
    runner, _, _ = env
    runner.run(run_rest(calls))
