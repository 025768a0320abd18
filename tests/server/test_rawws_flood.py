"""One hostile socket must not stall or bloat the node (issue 17): floods of frames from one
socket, the other sockets' pings measured throughout (tests/helpers/flood.py)."""

from __future__ import annotations

import pytest

from tests.conftest import running_server
from tests.helpers.flood import FloodResult, flood

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
    # closed as a flood (4100), unless its reset hid the close frame
    assert flooder["frames_sent"] < 1_000_000, result.summary()
    assert flooder["close_code"] == 4100 or flooder["reset"], result.summary()
