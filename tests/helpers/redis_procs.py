"""redis-server processes for the tests, on free ports of 127.0.0.1: one node (`RedisNode`),
one server (`RedisSingle`, `start_redis()`), and `NodeSet`, the bookkeeping that the Sentinel
and Cluster sets (redis_sentinel.py, redis_cluster.py) build on.

Nothing is persisted (`--save "" --appendonly no`, and a node's dump files are removed before
it is restarted): a restarted node comes back empty; replication gives a replica its data.
Every process is stopped by `stop()` (the sets are context managers too); an atexit hook kills
whatever a test run that crashed left behind. A set lives in a directory of its own (given, or
a temporary one that `stop()` removes): one subdirectory per node with its log (redis.log),
a sentinel's config, a cluster node's nodes.conf.

A set (and `RedisNode`, `start_redis`) takes an optional `password`: its data nodes then run
with `--requirepass` and `--masterauth` (replicas authenticate to their primary), the helpers'
own commands authenticate, and `url` carries it (`redis://:PW@...`). Sentinels themselves
take no password (they are told the data nodes': `sentinel auth-pass`).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis

from tests.helpers import TIMEOUT, free_port

HOST = "127.0.0.1"
T = TypeVar("T")

_LIVE: set[subprocess.Popen[bytes]] = set()  # every process started here and not yet reaped


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def executable(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        package = "redis-tools" if name == "redis-cli" else "redis-server"
        raise RuntimeError(f"{name} is needed for the Redis tests (apt-get install {package})")
    return exe


def command(port: int, *args: Any, timeout: float = 2.0, password: str | None = None) -> Any:
    """One command on a fresh connection to 127.0.0.1:`port` (authenticated with `password`
    when given). Replies are decoded to str and left raw, RESP2 (redis-py parses no reply but
    INFO's, which comes back as a dict)."""
    with redis.Redis(
        host=HOST,
        port=port,
        password=password,
        decode_responses=True,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    ) as client:
        return client.execute_command(*args)


class NotYet(Exception):
    """Raised by a `wait_for` probe: not yet, and why (reported if it never comes)."""


def credentials(password: str | None) -> str:
    """The userinfo part of a URL for `password`: `:PW@` (percent-encoded), or ''."""
    return "" if password is None else f":{quote(password, safe='')}@"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Call `probe` until it returns something other than None (NotYet or a Redis error
    count as not yet) and return that; after `timeout` seconds raise TimeoutError naming
    `what` and the last reason."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            got = probe()
            if got is not None:
                return got
        except (NotYet, redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(0.05)


class _ExitedAtStart(RuntimeError):
    pass


class RedisNode:
    """One redis-server process on `port`: a data node, a sentinel (`config` given: its file,
    which the sentinel rewrites) or a cluster node. `args` come after the port. With
    `password`, a data or cluster node requires it (and gives it to its primary), and
    `command()` authenticates; a sentinel is never given one (its config has `auth-pass`)."""

    DATA_ARGS = ("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0")

    def __init__(
        self,
        port: int,
        args: Sequence[str] = (),
        dir: Path | None = None,
        sentinel_config: Path | None = None,
        password: str | None = None,
    ) -> None:
        assert password is None or sentinel_config is None, "a sentinel takes no password"
        self.port = port
        self.args = list(args)
        self.dir = dir
        self.sentinel_config = sentinel_config
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False  # it has answered once: its port is known to others now

    def __repr__(self) -> str:
        return f"RedisNode({self.port}, {'up' if self.alive else 'down'})"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"redis-server on {self.port} was never started"
        return self.proc.pid

    @property
    def log(self) -> Path | None:
        return self.dir / "redis.log" if self.dir else None

    def start(self, *extra: str) -> Self:
        """Start it (`extra` arguments for this start only) and wait until it answers PING.
        A first start that fails is retried twice on other free ports (another process may
        have taken the port since it was found free); a restart keeps its port. A process
        that exits at start is reported with its log."""
        assert not self.alive, f"redis-server on {self.port} is running already"
        retries = 0 if self._started else 2
        for attempt in range(retries + 1):
            try:
                return self._start(extra)
            except _ExitedAtStart:
                if attempt == retries:
                    raise
                self.port = free_port()
                if "--cluster-port" in self.args:
                    at = self.args.index("--cluster-port") + 1
                    self.args[at] = str(free_port())
        raise AssertionError("unreachable")

    def _start(self, extra: Sequence[str]) -> Self:
        cmd = [executable("redis-server")]
        if self.sentinel_config is not None:
            cmd += [str(self.sentinel_config), "--sentinel"]
        else:
            cmd += self.DATA_ARGS
            if self.password is not None:
                cmd += ["--requirepass", self.password, "--masterauth", self.password]
        cmd += ["--port", str(self.port), "--bind", HOST, *self.args, *extra]
        out: Any = subprocess.DEVNULL
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            for dump in [*self.dir.glob("*.rdb"), *self.dir.glob("appendonly*")]:
                shutil.rmtree(dump) if dump.is_dir() else dump.unlink()  # come back empty
            cmd += ["--dir", str(self.dir)]
            out = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        _LIVE.add(self.proc)
        proc = self.proc

        def answers() -> bool | None:
            if proc.poll() is not None:
                _LIVE.discard(proc)
                log = self.log.read_text()[-3000:] if self.log else ""
                raise _ExitedAtStart(f"redis-server on {self.port} exited at start: {log}")
            return self.command("PING", timeout=0.5) or None

        try:
            wait_for(f"redis-server on {self.port} answering", answers, TIMEOUT)
        except BaseException:
            self.kill()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited within TIMEOUT."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: gone at once, like a crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        _LIVE.discard(self.proc)

    def command(self, *args: Any, timeout: float = 2.0) -> Any:
        """`command()` on this node, authenticated with its password if it has one."""
        return command(self.port, *args, timeout=timeout, password=self.password)

    def info(self, section: str = "replication") -> dict[str, Any]:
        got: dict[str, Any] = self.command("INFO", section)
        return got

    def replica_in_sync(self) -> bool:
        """True if it is a replica whose link to its primary is up; else NotYet."""
        info = self.info()
        if info["role"] != "slave" or info["master_link_status"] != "up":
            raise NotYet(f"{self.port}: role {info['role']}, link {info.get('master_link_status')}")
        return True


class RedisSingle(RedisNode):
    """One Redis server, nothing saved: `restart()` brings it back empty on the same port."""

    @property
    def url(self) -> str:
        return f"redis://{credentials(self.password)}{HOST}:{self.port}/0"

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis(dir: Path | None = None, password: str | None = None) -> RedisSingle:
    """A running `RedisSingle` on a free port (its log in `dir` when given; requiring
    `password` when given)."""
    return RedisSingle(free_port(), dir=dir, password=password).start()


class NodeSet:
    """The process bookkeeping of a set of nodes: its directory, start/stop, context manager.
    A set that fails to start is stopped before the error is raised. `password`: its data
    nodes' (see the module doc)."""

    def __init__(self, root: Path | None, password: str | None = None) -> None:
        self.password = password
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="pushwire-redis-")) if root is None else root
        self.nodes: list[RedisNode] = []

    def new_node(
        self, name: str, args: Sequence[str] = (), sentinel: str | None = None
    ) -> RedisNode:
        """A node on a free port in root/<name>-<port>/ (`sentinel`: its config's text); a
        data node requires the set's password."""
        port = free_port()
        dir = self.root / f"{name}-{port}"
        config = None
        if sentinel is not None:
            dir.mkdir(parents=True)
            config = dir / "sentinel.conf"
            config.write_text(sentinel)
        node = RedisNode(port, args, dir, config, None if config else self.password)
        self.nodes.append(node)
        return node

    def node(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this set on port {port}")

    def command(self, port: int, *args: Any, timeout: float = 2.0) -> Any:
        """`command()` on this set's node on `port`, authenticated as that node needs."""
        return self.node(port).command(*args, timeout=timeout)

    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGKILL every node (nothing to save) and remove a temporary root."""
        for node in self.nodes:
            if node.alive:
                assert node.proc is not None
                node.proc.kill()
        for node in self.nodes:
            node.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def pids(self) -> dict[int, int]:
        """port -> pid of the nodes running now (for /proc/PID/stat CPU readings)."""
        return {node.port: node.pid for node in self.nodes if node.alive}
