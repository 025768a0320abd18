"""One hostile socket must not stall or bloat the node (issue 17): floods of frames from one
socket, the other sockets' pings measured throughout (tests/helpers/flood.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushwire.protocol.signing import sign_rest
from tests.conftest import TIMEOUT, running_server
from tests.helpers.flood import FloodResult, flood
from tests.helpers.wsraw import frame

pytestmark = pytest.mark.slow

CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("flood"), CONFIG) as s:
        yield s


def assert_served_throughout(result: FloodResult) -> None:
    """The other socket's pings were answered within 100 ms throughout. On a loaded 2-core
    machine a ping sometimes waits for a core whatever the server does (tens of ms, seen
    without any flood too), so: 95 % within 100 ms and none over 1 s. Before issue 17's fix
    one ping waited for the whole flood to be handled (over 100 s), so this fails then."""
    assert not result.timed_out, result.summary()
    assert result.worst_ping < 1.0, result.summary()
    assert result.ping_quantile(0.95) < 0.1, result.summary()


MASK = b"\0\0\0\0"


@pytest.mark.parametrize(
    ("unit", "prefix"),
    [
        (b"\x81\x80" + MASK, b""),  # empty text messages (each one a pusher:error 4300)
        (b"\x82\x80" + MASK, b""),  # empty binary messages (likewise)
        (b"\x89\x80" + MASK, b""),  # empty pings (each one a pong)
        (b"\x8a\x80" + MASK, b""),  # empty pongs (nothing to answer)
        # empty continuation frames of one text message that never ends
        (b"\x00\x80" + MASK, b"\x01\x81" + MASK + b"{"),
    ],
    ids=["text", "binary", "ping", "pong", "continuation"],
)
async def test_a_million_empty_frames_neither_bloat_nor_stall_the_node(srv, unit, prefix):
    result = await flood(srv.port, srv.procs[0].pid, 1_000_000, unit, prefix)
    assert_served_throughout(result)
    assert result.rss_growth < 20_000_000, result.summary()
    flooder = result.attacker
    # closed as a flood: 4100, or no close frame at all when the reset that closing a socket
    # with unread bytes sends overtook it (RFC 6455 7.1.7: stop reading, close at once)
    assert flooder["frames_sent"] < 1_000_000, result.summary()
    assert flooder["close_code"] in (4100, None), result.summary()


# Any stream of valid frames -----------------------------------------------------------------
MAX_PENDING = 1 << 20
MAX_FRAME = 65536
PROPERTY_CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0
max_pending_bytes = {MAX_PENDING}
max_frame_size = {MAX_FRAME}

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("flood-prop"), PROPERTY_CONFIG) as s:
        yield s


PING_MSG = b'{"event":"pusher:ping","data":{}}'
sizes = st.sampled_from([0, 1, 125, 126, 1000, MAX_FRAME // 2, MAX_FRAME]) | st.integers(
    0, MAX_FRAME
)


# one message: (kind, payload size, fragments, a ping between each two fragments or not)
messages = st.tuples(
    st.sampled_from(["ping-event", "text", "binary", "ping", "pong"]),
    sizes,
    st.integers(1, 4),
    st.booleans(),
)


def build(kind: str, size: int, parts: int, pings: bool) -> bytes:
    """The frames of one message of valid frames: text (a pusher:ping, or any text) or binary
    in `parts` fragments, maybe with pings between them; or one control frame."""
    if kind in ("ping", "pong"):
        return frame(9 if kind == "ping" else 10, b"p" * min(size, 125))
    data = PING_MSG if kind == "ping-event" else (b"x" if kind == "text" else b"\0") * size
    step = -(-len(data) // parts) or 1
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    out = b""
    for i, chunk in enumerate(chunks):
        out += frame((2 if kind == "binary" else 1) if i == 0 else 0, chunk, i == len(chunks) - 1)
        if pings and i < len(chunks) - 1:
            out += frame(9, b"between")
    return out


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(messages, min_size=1, max_size=12))
def test_any_stream_of_valid_frames_keeps_memory_bounded_and_others_served(small, specs):
    """One socket sends a block of valid messages again and again (up to 32 MB or 100,000
    messages): the node's memory stays under a bound proportional to max_pending_bytes, and
    another socket's pings are answered throughout."""
    block = b"".join(build(*spec) for spec in specs)
    repeats = max(1, min(100_000 // len(specs), (32 << 20) // len(block)))
    result = asyncio.run(
        flood(small.port, small.procs[0].pid, repeats, block, settle=0.3, limit=60)
    )
    assert_served_throughout(result)
    assert result.rss_growth < 8 * MAX_PENDING + (12 << 20), result.summary()


async def test_the_tap_stream_takes_no_messages(srv):
    """/tap (and the dashboard's live log) is aiohttp's WebSocket and only sends: a message
    from its client closes it (1003) rather than being read and dropped, so an authenticated
    client cannot flood the loop through it either (item 4 of issue 17)."""
    query = sign_rest("app-key", "app-secret", "GET", "/tap", {"app": "app-id"}, b"")
    async with aiohttp.ClientSession() as s:
        tap = await s.ws_connect(f"ws://127.0.0.1:{srv.port}/tap", params=query)
        await tap.send_str("")
        msg = await tap.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1003, msg
        await tap.close()
