"""The frame decoder (pushwire/protocol/websocket.py), without sockets: whatever way the byte
stream is cut into reads, the same events come out, in order; its limits and close codes;
the encoders; the upgrade parser (transport/httphead.py)."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pushwire.protocol.websocket import (
    Binary,
    Close,
    Decoder,
    Event,
    Fail,
    Partial,
    Ping,
    Pong,
    Text,
    accept_key,
    close_frame,
    text_frame,
    unmask,
)
from pushwire.transport.httphead import parse_upgrade
from tests.helpers.wsraw import frame

MAX = 1000


def events(decoder: Decoder, data: bytes = b"") -> list[Event]:
    decoder.feed(data)
    out = []
    while (event := decoder.next()) is not None:
        out.append(event)
    return out


def whole(evs: list[Event]) -> list[Event]:
    return [e for e in evs if type(e) is not Partial]


message = st.tuples(
    st.sampled_from(["text", "binary"]),
    st.text(max_size=300).filter(lambda t: len(t.encode()) <= MAX),
    st.integers(min_value=1, max_value=4),  # fragments
    st.booleans(),  # a ping between the fragments
)


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=8), st.lists(st.integers(0, 100_000), max_size=12))
def test_any_cut_of_the_stream_gives_the_same_events(messages, cuts):
    stream = b""
    expected: list[Event] = []
    pings = 0
    for kind, text, parts, ping in messages:
        data = text.encode()
        op = 1 if kind == "text" else 2
        size = -(-len(data) // parts) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        msg = Text(text, len(data)) if kind == "text" else Binary(data)
        for i, chunk in enumerate(chunks):
            stream += frame(op if i == 0 else 0, chunk, fin=i == len(chunks) - 1)
            if i == len(chunks) - 1:
                expected.append(msg)
            if ping and i == 0:  # between the fragments, or after a message of one frame
                stream += frame(9, b"p%d" % pings)
                expected.append(Ping(b"p%d" % pings))
                pings += 1
    decoder = Decoder(MAX)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    got: list[Event] = []
    for a, b in itertools.pairwise(points):
        got += events(decoder, stream[a:b])
    assert whole(got) == expected
    assert decoder.idle and decoder.buffered == 0


def test_one_event_per_frame():
    """A fragmented message's frames come out one by one (Partial), so the caller can count
    and pace them: a million empty continuation frames are a million events."""
    decoder = Decoder(MAX)
    got = events(decoder, frame(1, b"a", fin=False) + frame(0, b"", fin=False) * 5 + frame(0, b"b"))
    assert got == [Partial()] * 6 + [Text("ab", 2)]


def test_a_message_over_the_limit_fails_1009_at_its_header():
    decoder = Decoder(MAX)
    big = frame(1, b"x" * (MAX + 1))
    assert events(decoder, big[:8]) == [Fail(1009, f"message larger than {MAX} bytes")]
    assert events(decoder, big[8:] + frame(1, b"ignored")) == []  # nothing more is decoded
    assert decoder.done and decoder.buffered == 0
    # the message counts, not the frame
    decoder = Decoder(MAX)
    got = events(decoder, frame(1, b"x" * 600, fin=False) + frame(0, b"x" * 600))
    assert got[-1].code == 1009  # type: ignore[union-attr]
    assert events(Decoder(MAX), frame(1, b"x" * MAX)) == [Text("x" * MAX, MAX)]


def test_protocol_errors_and_their_codes():
    msb = bytes((0x81, 0xFF)) + (1 << 63 | 5).to_bytes(8, "big") + b"\0\0\0\0"
    cases = [
        (frame(1, b"x", mask=False), 1002),
        (frame(1, b"x", rsv=4), 1002),
        (frame(3, b""), 1002),  # unknown opcode
        (frame(9, b"x", fin=False), 1002),  # fragmented control frame
        (bytes((0x89, 0xFE)) + struct.pack("!H", 126) + b"\0" * 130, 1002),  # long control
        (bytes((0x81, 0xFE)) + struct.pack("!H", 5) + b"\0" * 9, 1002),  # not minimal (16)
        (bytes((0x81, 0xFF)) + struct.pack("!Q", 5) + b"\0" * 9, 1002),  # not minimal (64)
        (msb, 1002),  # 64-bit length with its most significant bit set, not 1009
        (frame(0, b"x"), 1002),  # a continuation of nothing
        (frame(1, b"a", fin=False) + frame(1, b"b"), 1002),  # a new message mid-message
        (frame(1, b"\xff\xfe"), 1007),
        (frame(1, b"ok \xc3", fin=False) + frame(0, b"\x28"), 1007),  # across fragments
        (frame(8, b"\x03"), 1002),  # a close frame with one byte
        (frame(8, struct.pack("!H", 1006)), 1002),  # a code no peer may send
        (frame(8, struct.pack("!H", 999)), 1002),
        (frame(8, struct.pack("!H", 2000)), 1002),
        (frame(8, struct.pack("!H", 1000) + b"\xff"), 1007),  # reason not UTF-8
    ]
    for data, code in cases:
        got = events(Decoder(1 << 62), data)
        assert type(got[-1]) is Fail and got[-1].code == code, (data[:20], got)


def test_invalid_utf8_fails_at_the_fragment_that_breaks_it():
    """Checked fragment by fragment: a ping after the bad fragment is not answered."""
    got = events(Decoder(MAX), frame(1, b"\xff", fin=False) + frame(9, b"p") + frame(0, b"x"))
    assert got == [Fail(1007, "text message is not valid UTF-8")]
    ok = frame(1, "é".encode()[:1], fin=False) + frame(9, b"p") + frame(0, "é".encode()[1:])
    assert whole(events(Decoder(MAX), ok)) == [Ping(b"p"), Text("é", 2)]


def test_close_frames():
    assert events(Decoder(MAX), frame(8, b"")) == [Close(1005, "")]
    got = events(Decoder(MAX), frame(8, struct.pack("!H", 4321) + b"bye") + frame(1, b"late"))
    assert got == [Close(4321, "bye")]  # nothing after the close frame
    for code in (1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999):
        assert events(Decoder(MAX), frame(8, struct.pack("!H", code))) == [Close(code, "")]
    assert events(Decoder(MAX), frame(10, b"pong")) == [Pong(b"pong")]


def test_encoders_and_helpers():
    # RFC 6455 section 1.3's example
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert unmask(b"", b"abcd") == b""
    assert unmask(unmask(b"hello world", b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == (
        b"hello world"
    )
    for n in (0, 125, 126, 65535, 65536):
        f = text_frame(b"x" * n)
        assert f.endswith(b"x" * n) and f[0] == 0x81
        assert len(f) - n == (2 if n < 126 else 4 if n < 65536 else 10)
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert len(close_frame(4000, "é" * 200)) <= 127


def test_parse_upgrade_takes_only_plain_upgrades():
    head = (
        b"GET /app/app-key?protocol=7&client=js HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8"
    )
    req = parse_upgrade(head)
    assert req is not None and req.app_key == "app-key" and req.query == "protocol=7&client=js"
    assert req.headers["x-forwarded-for"] == ["1.2.3.4", "5.6.7.8"]
    # anything unusual is aiohttp's to answer
    for bad in (
        head.replace(b"GET", b"POST"),
        head.replace(b"HTTP/1.1", b"HTTP/1.0"),
        head.replace(b"Version: 13", b"Version: 8"),
        head.replace(b"/app/app-key", b"/app/app%20key"),
        head.replace(b"/app/app-key", b"/app/"),
        head.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"),
        head.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        head + b"\r\nContent-Length: 5",
        head + b"\r\n folded",
        head + b"\r\nBad Header: x",
        head.replace(b"Host: x", "Host: \u00e9".encode()),
    ):
        assert parse_upgrade(bad) is None, bad
