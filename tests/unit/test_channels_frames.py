import pytest

from pushwire.protocol import messages
from pushwire.protocol.channels import Kind, channel_type, validate_channel_name
from pushwire.protocol.errors import InvalidChannel, Unauthorized
from pushwire.protocol.websocket import close_frame, text_frame


@pytest.mark.parametrize(
    ("name", "kind", "cache"),
    [
        ("my-channel", Kind.PUBLIC, False),
        ("privatefoo", Kind.PUBLIC, False),
        ("private-foo", Kind.PRIVATE, False),
        ("private-encrypted-foo", Kind.ENCRYPTED, False),
        ("presence-foo", Kind.PRESENCE, False),
        ("cache-foo", Kind.PUBLIC, True),
        ("private-cache-foo", Kind.PRIVATE, True),
        ("private-encrypted-cache-foo", Kind.ENCRYPTED, True),
        ("presence-cache-foo", Kind.PRESENCE, True),
        ("#server-to-user-42", Kind.SERVER_TO_USER, False),
    ],
)
def test_channel_kinds(name, kind, cache):
    t = channel_type(name)
    assert (t.kind, t.cache) == (kind, cache)


@pytest.mark.parametrize(
    "bad", ["", "a b", "foo#bar", "ü", "x" * 201, "private-", "#server-to-user-", None, 5]
)
def test_invalid_channel_names(bad):
    with pytest.raises(InvalidChannel):
        validate_channel_name(bad)


def test_valid_channel_names():
    assert validate_channel_name("-_=@,.;AZaz09") == "-_=@,.;AZaz09"
    assert validate_channel_name("x" * 200) == "x" * 200
    with pytest.raises(InvalidChannel):
        validate_channel_name("x" * 165, max_length=164)


def test_text_frame_headers():
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"a" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


def test_close_frame():
    assert close_frame(4100, "slow") == b"\x88\x06\x10\x04slow"
    assert len(close_frame(4100, "x" * 500)) == 2 + 2 + 120  # fits a control frame


def test_exact_wire_strings():
    assert messages.connection_established("1.2", 120).payload == (
        b'{"event":"pusher:connection_established",'
        b'"data":"{\\"socket_id\\":\\"1.2\\",\\"activity_timeout\\":120}"}'
    )
    assert messages.subscription_succeeded("my-channel").payload == (
        b'{"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"}'
    )
    assert messages.member_removed("presence-a", "7").payload == (
        b'{"event":"pusher_internal:member_removed","channel":"presence-a",'
        b'"data":"{\\"user_id\\":\\"7\\"}"}'
    )
    assert messages.cache_miss("cache-a").payload == (
        b'{"event":"pusher:cache_miss","channel":"cache-a"}'
    )
    assert messages.channel_event("ev", "c", '{"x":1}').payload == (
        b'{"event":"ev","channel":"c","data":"{\\"x\\":1}"}'
    )


# The system events whose `data` hosted Pusher sends as an object, not a JSON string
# (PROTOCOL.md, "System Events"): byte for byte.
def test_system_event_pusher_error_is_an_object():
    assert messages.error(Unauthorized("nope")).payload == (
        b'{"event":"pusher:error","data":{"code":4009,"message":"nope"}}'
    )
    assert messages.error_message(None, "Invalid signature").payload == (
        b'{"event":"pusher:error","data":{"code":null,"message":"Invalid signature"}}'
    )


def test_system_event_ping_and_pong_are_objects():
    assert messages.PING.payload == b'{"event":"pusher:ping","data":{}}'
    assert messages.PONG.payload == b'{"event":"pusher:pong","data":{}}'


def test_system_event_subscription_count_and_signin_success():
    assert messages.subscription_count("c", 3).payload == (
        b'{"event":"pusher_internal:subscription_count","channel":"c",'
        b'"data":"{\\"subscription_count\\":3}"}'
    )
    assert messages.signin_success('{"id":"u"}').payload == (
        b'{"event":"pusher:signin_success","data":{"user_data":"{\\"id\\":\\"u\\"}"}}'
    )


def test_close_reason_is_cut_on_a_character_boundary():
    from pushwire.protocol.websocket import close_frame, close_reason

    cut = close_reason("é" * 100)  # 200 bytes
    assert len(cut) == 120 and cut.decode() == "é" * 60
    odd = close_reason("a" + "é" * 100)  # the 120th byte would split a character
    assert len(odd) == 119 and odd.decode() == "a" + "é" * 59
    frame = close_frame(4001, "x" + "€" * 100)
    assert frame[2:4] == (4001).to_bytes(2, "big")
    frame[4:].decode()  # valid UTF-8
