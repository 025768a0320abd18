"""Pusher messages and frames for fuzzing (structured but wrong, some correctly signed), the
signing of a frame for the socket it is sent on (`resolve`), and the check of one frame a client
receives (`check_event`)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import strategies as st

from pushwire.protocol.channels import channel_type
from pushwire.protocol.signing import channel_string_to_sign, sign_auth, user_string_to_sign
from tests.helpers.fuzz_values import (
    KEY,
    SECRET,
    VALID_CHANNELS,
    Huge,
    channel_values,
    deep_values,
    huge_strings,
    json_values,
    numbers,
    small_text,
    strings,
)

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

# placeholders replaced, when a frame is sent, by a signature for the receiving socket
AUTH = "$AUTH"  # valid
AUTH_OTHER_SOCKET = "$AUTH_OTHER_SOCKET"  # valid for another socket id (a replay)
AUTH_WRONG_SECRET = "$AUTH_WRONG_SECRET"

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
