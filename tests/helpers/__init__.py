"""Test infrastructure shared by the suites (a library: no tests here).

- `redis_topology`: real redis-server processes on free ports: one server, a Sentinel set, a
  Redis Cluster.
- `blackhole`: a TCP proxy that can stop moving bytes without closing connections.
- `fixtures`: pytest fixtures over them (loaded by tests/conftest.py via `pytest_plugins`).
- `client`: a minimal raw Pusher client (aiohttp), a signed REST caller and a wait for
  `/ready`, for server tests.
- `rest`, `wsraw`: signed REST requests and WebSocket frames written by hand.
- `handler`: sockets on an in-process handler (FakeConnection).
- `fuzz_values`, `fuzz_frames`: hypothesis strategies and the checks of received frames.
- `webhooks`: a webhook receiver that checks signatures with the pusher SDK.
- `contract_backends`: the cluster backends (memory, Redis, Redis Cluster) as clusters of
  nodes, for the contract tests (tests/cluster/test_contract_*.py).
- `chromium`: headless Chromium for the browser suites.

No test module imports another test module: what two suites share lives here.

The two basics every test helper uses live here: `TIMEOUT` and `free_port()`.
"""

from __future__ import annotations

import os
import socket

# One factor scales every timeout in the tests (raise it on a slow machine).
TIMEOUT = float(os.environ.get("PUSHWIRE_TEST_TIMEOUT_FACTOR", "1")) * 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
