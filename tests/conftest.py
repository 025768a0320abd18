"""Shared fixtures: real `pushwire serve` processes on free ports, signed REST helpers.

Redis processes (one server, Sentinel, Cluster) and the black-hole proxy come from
tests/helpers/ (their fixtures: tests/helpers/fixtures.py, loaded below).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import TIMEOUT, free_port
from tests.helpers.redis_procs import RedisSingle, start_redis

pytest_plugins = ["tests.helpers.fixtures"]  # redis_server, sentinel_set, redis_cluster, blackhole

Redis = RedisSingle  # the name the suites import
__all__ = ["TIMEOUT", "Redis", "RedisSingle", "free_port", "start_redis"]  # re-exported

ROOT = Path(__file__).resolve().parent.parent
# nodes the tests start stop at once on SIGTERM (no drain: no load balancer to wait for)
os.environ.setdefault("PUSHWIRE_DRAIN_DELAY", "0")

BASE_CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_watchlist_events = true
# every channel keeps history: the SDK scenarios must see no difference (issue 11)
history_size = 50

[[apps]]
id = "1001"
key = "py-key"
secret = "py-secret"

[[apps]]
id = "noclient-id"
key = "noclient-key"
secret = "noclient-secret"
enable_client_messages = false

[[apps]]
id = "quota-id"
key = "quota-key"
secret = "quota-secret"
max_connections = 2
max_presence_members = 1

[[apps]]
id = "1004"
key = "off-key"
secret = "off-secret"
enabled = false
"""


@pytest.fixture(scope="session")
def redis_state_server() -> Iterator[Redis]:
    """A second Redis: the state's, when the tests set bus and state apart."""
    r = start_redis()
    yield r
    r.stop()


@dataclass
class Server:
    """One node, or several cluster nodes: each use of `port`, `http` or `ws_url` picks the
    next node, so a test's clients and REST calls are spread over the cluster."""

    procs: list[subprocess.Popen[str]]
    ports: list[int]
    logs: list[Path]
    turn: int = 0

    def _next(self) -> int:
        self.turn += 1
        return self.ports[self.turn % len(self.ports)]

    @property
    def port(self) -> int:
        return self._next()

    @property
    def log(self) -> Path:
        return self.logs[0]

    def log_text(self) -> str:
        return "".join(p.read_text() for p in self.logs)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self._next()}"

    def ws_url(
        self, key: str = "app-key", query: str = "protocol=7&client=test&version=1.0"
    ) -> str:
        return f"ws://127.0.0.1:{self._next()}/app/{key}?{query}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            stop_node(proc)


NODE_LOGS: dict[int, Path] = {}  # pid -> log of nodes started by start_node


def stop_node(proc: subprocess.Popen[str]) -> None:
    """SIGTERM a node and wait for it; a node that hangs is made to log its tasks (SIGUSR1),
    killed, and reported with its log."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        proc.wait()
        log = NODE_LOGS.get(proc.pid)
        raise AssertionError(
            f"node did not stop within {TIMEOUT} s: {log.read_text()[-6000:] if log else ''}"
        ) from None


LISTENING = re.compile(r"listening on https?://[\d.]+:(\d+)")


def listening_ports(log: Path) -> list[int]:
    """The ports a log says were listened on, one per process: a node logs its line once its
    socket listens (workers sharing a port log one line each)."""
    return [int(port) for port in LISTENING.findall(log.read_text())]


def start_node(tmp: Path, config: str, *extra: str) -> tuple[subprocess.Popen[str], int, Path]:
    cfg = tmp / f"pushwire-{time.monotonic_ns()}.toml"
    cfg.write_text(textwrap.dedent(config))
    log = cfg.with_suffix(".log")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pushwire", "serve", "--config", str(cfg), *extra],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ports = listening_ports(log)
        if ports:
            NODE_LOGS[proc.pid] = log
            return proc, ports[0], log
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


@contextlib.contextmanager
def running_server(tmp: Path, config: str, *extra: str, nodes: int = 1) -> Iterator[Server]:
    """A server for a test module: stopped afterwards, and it may not have logged a
    traceback (a client mistake must never print one)."""
    s = start_server(tmp, config, *extra, nodes=nodes)
    try:
        yield s
    finally:
        s.stop()
    text = s.log_text()
    assert "Traceback" not in text, text[-3000:]


def start_server(tmp: Path, config: str, *extra: str, nodes: int = 1) -> Server:
    started = [start_node(tmp, config, *extra) for _ in range(nodes)]
    return Server(
        [p for p, _, _ in started], [port for _, port, _ in started], [log for _, _, log in started]
    )


@contextlib.contextmanager
def cluster_nodes(
    redis: Redis | ClusterUrl, tmp: Path, config: str, prefix: str, n: int = 2
) -> Iterator[list[tuple[subprocess.Popen[str], int, Path]]]:
    """`n` nodes of one cluster over `redis`; stopped afterwards, and none may have logged a
    traceback."""
    cfg = cluster_config(redis, config, prefix=prefix)
    nodes = [start_node(tmp, cfg) for _ in range(n)]
    try:
        yield nodes
    finally:
        for p, _, _ in nodes:
            stop_node(p)
    text = "".join(log.read_text() for _, _, log in nodes)
    assert "Traceback" not in text, text


def cluster_config(
    redis: Redis | ClusterUrl,
    config: str = BASE_CONFIG,
    prefix: str = "pw",
    state: Redis | None = None,
) -> str:
    """A cluster over `redis`; with `state`, the bus on `redis` and the state on `state`."""
    urls = f'redis_url = "{redis.url}"'
    if state is not None:
        urls = f'bus_url = "{redis.url}"\nstate_url = "{state.url}"'
    return textwrap.dedent(config) + "\n[cluster]\n" + urls + textwrap.dedent(f"""
        node_timeout = 2.0
        heartbeat_interval = 0.5
        key_prefix = "{prefix}"
    """)


@dataclass
class ClusterUrl:
    """A Redis Cluster where a `Redis` is expected (`cluster_config` needs its `url`)."""

    url: str


def redis_target(request: pytest.FixtureRequest, kind: str) -> Redis | ClusterUrl:
    """The Redis the fixture `kind` names: "redis-cluster" the session's Redis Cluster
    (`shared_redis_cluster`), else the session's server."""
    if kind == "redis-cluster":
        return ClusterUrl(request.getfixturevalue("shared_redis_cluster").url())
    r: Redis = request.getfixturevalue("redis_server")
    return r


@pytest.fixture(scope="session", params=["single", "cluster", "split", "redis-cluster"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The shared server: one node; a 3-node cluster over a real Redis; the same with the bus
    and the state on two Redis servers (afterwards the state's saw no pub/sub); a 3-node
    cluster over a Redis Cluster."""
    external = os.environ.get("PUSHWIRE_TEST_EXTERNAL_PORT")
    if external:  # a server started elsewhere (tests/deploy: the container image)
        if request.param != "single":
            pytest.skip("PUSHWIRE_TEST_EXTERNAL_PORT names one external node")
        yield Server([], [int(external)], [])
        return
    tmp = tmp_path_factory.mktemp(request.param)
    state = None
    if request.param == "single":
        srv = start_server(tmp, BASE_CONFIG)
    else:
        redis = redis_target(request, request.param)
        if request.param == "split":
            state = request.getfixturevalue("redis_state_server")
        config = cluster_config(redis, prefix=request.param, state=state)
        srv = start_server(tmp, config, nodes=3)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()
    if state is not None:
        stats = state.info("commandstats")
        assert not [k for k in stats if "publish" in k or "subscribe" in k], stats


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket a test forgot to close is reported by the garbage collector, and
    `filterwarnings = error` turns that into a failure: collect after each test, so the
    failure lands on the test that leaked, not on whichever test the collector ran in. What
    survives is frozen (`gc.freeze`), so the next collection looks only at what the next test
    made: a full collection of the whole heap took ~0.1 s per test, half the quick loop."""
    yield
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A request signed where tests are collected expires in a run longer than the REST
    timestamp window (600 s): parametrize with `tests.helpers.rest.later(...)` instead."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec else ():
            if isinstance(value, bytes) and b"auth_signature=" in value:
                raise pytest.UsageError(f"{item.nodeid}: a request signed at collection time")
