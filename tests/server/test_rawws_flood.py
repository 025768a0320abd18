"""One hostile socket must not stall or bloat the node (issue 17): floods of frames from one
socket, the other sockets' pings measured throughout (tests/helpers/flood.py)."""

from __future__ import annotations

import pytest

from tests.conftest import running_server
from tests.helpers.flood import flood

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


async def test_a_million_empty_frames_neither_bloat_nor_stall_the_node(srv):
    result = await flood(srv.port, srv.procs[0].pid, 1_000_000)
    print(result.summary())
    assert not result.timed_out, result.summary()
    assert result.rss_growth < 20_000_000, result.summary()
    assert result.worst_ping < 0.1, result.summary()
