"""The servers the benchmarks measure, each started on 127.0.0.1 and stopped here: Pushwire
(from this checkout or another one, with a temporary TOML config), soketi 1.6.1 (the peer
install, ../shared/peers/soketi), the C "floor" (bench/floor/floor.c), redis-server, and an
already running server given by URL and PID."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.lib import ROOT, procs
from bench.lib.native import FLOOR_BIN, FLOOR_SRC, URING_HEADER, build_c
from bench.lib.wire import APP_ID, KEY, SECRET
from tests.helpers.redis_procs import RedisSingle

PEER_SOKETI = ROOT.parent / "shared" / "peers" / "soketi"


@dataclass
class Server:
    """A started (or given) server: its CPU and RSS (with every process below it, and
    `also`: e.g. the Redis a cluster runs over), `stop()`, and `restart()` with the same
    command on the same port."""

    name: str
    port: int
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    files: list[str] = field(default_factory=list)  # files and folders removed by stop()
    also: list[int] = field(default_factory=list)  # PIDs counted with the server's CPU
    start: Callable[[], Server] | None = None  # what started it, for restart()
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pids(self) -> list[int]:
        return [self.pid, *self.also]

    def cpu_s(self) -> float:
        return procs.cpu_s(self.pids())

    def rss(self) -> int:
        return procs.rss([self.pid])

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, wait for it (and its children) to exit, remove its temporary files;
        returns the seconds it took to exit."""
        t = time.monotonic()
        try:
            root = psutil.Process(self.pid)
            kids = root.children(recursive=True)
            root.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            root, kids = None, []
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        elif root is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                try:
                    root.wait(timeout)
                except psutil.TimeoutExpired:
                    root.kill()
        took = time.monotonic() - t
        _, alive = psutil.wait_procs(kids, 5)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        for f in self.files:
            if os.path.isdir(f):
                shutil.rmtree(f, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(f)
        return took

    def restart(self) -> Server:
        """The same server started again on the same port (after stop())."""
        if self.start is None:
            raise RuntimeError(f"{self.name} was not started here")
        return self.start()


def external(url: str, pid: int | None) -> Server:
    """An already running server (its PID for CPU and RSS, if given)."""
    host_port = url.split("//", 1)[-1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    return Server("external", int(port), pid or 0, host=host)


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode})") from None
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port: int = sk.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------- Pushwire
def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def pushwire_config(
    port: int,
    server: Mapping[str, Any] | None = None,
    app: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A config file's text: [server] on 127.0.0.1:`port` (log level warning) plus `server`;
    the bench app (with `app`'s settings), unless `app` is None and `sections` has an app
    store; more `sections` ({"cluster": {"redis_url": ...}})."""
    srv = {"host": "127.0.0.1", "port": port, "log_level": "warning", **(server or {})}
    lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in srv.items())]
    sections = sections or {}
    if app is not None or "apps_store" not in sections:
        apps = {"id": APP_ID, "key": KEY, "secret": SECRET, **(app or {})}
        lines += ["", "[[apps]]", *(f"{k} = {_toml(v)}" for k, v in apps.items())]
    for name, values in sections.items():
        lines += ["", f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def write_temp(text: str, prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def start_pushwire(
    port: int,
    *,
    name: str = "pushwire",
    server: Mapping[str, Any] | None = None,
    app: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    tree: str | None = None,
    env: Mapping[str, str] | None = None,
    log: str | None = None,
    command: list[str] | None = None,
) -> Server:
    """`pushwire serve` with a temporary config (see `pushwire_config`), from this checkout
    or (`tree`) from another checkout's `pushwire/` package run by the same interpreter (for
    before/after ratios in one invocation). `command` replaces `-m pushwire serve` (e.g. a
    server under tracemalloc); `log` gets the server's output; with `workers` > 1 in `server`
    it returns once every worker runs."""
    config = write_temp(pushwire_config(port, server, app, sections), "pushwire-bench-", ".toml")
    full_env = dict(os.environ, **(env or {}))
    if tree:
        full_env["PYTHONPATH"] = str(Path(tree).resolve())  # ahead of the editable install
    cmd = [sys.executable, *(command or ["-m", "pushwire", "serve"]), "--config", config]
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        p = subprocess.Popen(cmd, cwd=tree or ROOT, env=full_env, stdout=out, stderr=out)
    wait_port(port, proc=p)
    workers = int((server or {}).get("workers", 1))
    if workers > 1:  # every worker must listen before the load starts
        deadline = time.monotonic() + 30
        while len(psutil.Process(p.pid).children()) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)

    def again() -> Server:
        return start_pushwire(
            port, name=name, server=server, app=app, sections=sections, tree=tree, env=env,
            log=log, command=command,
        )  # fmt: skip

    return Server(name, port, p.pid, p, [config], start=again)


# ------------------------------------------------------------------------------------ soketi
def start_soketi(port: int) -> Server:
    """soketi 1.6.1 as installed by ../shared/peers/soketi/start.sh, with that folder's
    config.json except: user authentication off (the peer config turns it on, and soketi then
    closes every socket that has not signed in after 30 s with 4009; Pushwire's default is
    off too) and its metrics/usage port moved next to `port` (the default 9601 is shared)."""
    d = Path(os.environ.get("SOKETI_DIR") or Path(tempfile.gettempdir()) / "soketi-baseline")
    binary = d / "node_modules" / ".bin" / "soketi"
    if not binary.exists():  # install through the peer script once, then stop what it started
        out = subprocess.run(
            ["sh", str(PEER_SOKETI / "start.sh"), str(port)],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(out.stdout.split()[-1])
        wait_port(port, 120)
        Server("soketi", port, pid).stop()
    cfg = json.loads((PEER_SOKETI / "config.json").read_text())
    cfg["port"] = port
    cfg["metrics.port"] = port + 50
    for a in cfg.get("appManager.array.apps", []):
        a["enableUserAuthentication"] = False
    path = write_temp(json.dumps(cfg), "soketi-bench-", ".json")
    with open(d / "soketi-bench.log", "ab") as log:
        p = subprocess.Popen(
            [str(binary), "start", f"--config={path}"], cwd=d, stdout=log, stderr=log
        )
    wait_port(port, 120, proc=p)
    return Server("soketi", port, p.pid, p, [path], start=lambda: start_soketi(port))


# ------------------------------------------------------------------------------- the floor
def start_floor(port: int, uring: bool = False) -> Server:
    """bench/floor/floor.c: the kernel's floor for fan-out (one send() or, `uring`, one
    io_uring SEND per socket per event; no authentication, no buffering)."""
    has_uring = URING_HEADER.exists()
    if uring and not has_uring:
        raise SystemExit("floor-uring needs liburing (apt-get install liburing-dev)")
    # built with io_uring wherever liburing is installed (a binary per variant, so that one
    # built before liburing was installed is not taken for the other)
    if has_uring:
        binary = build_c(
            FLOOR_SRC, FLOOR_BIN.with_name("floor-uring"), ["-DFLOOR_URING", "-luring"]
        )
    else:
        binary = build_c(FLOOR_SRC, FLOOR_BIN)
    # the log (the floor's counters, printed when it stops) is removed with the server
    fd, log_path = tempfile.mkstemp(prefix="floor-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        p = subprocess.Popen(
            [str(binary), str(port), "uring" if uring else "send"], stdout=log, stderr=log
        )
    wait_port(port, proc=p)
    name = "floor-uring" if uring else "floor"
    return Server(name, port, p.pid, p, [log_path], start=lambda: start_floor(port, uring))


# ------------------------------------------------------------------------------------- Redis
def start_redis(*options: str) -> tuple[Server, str]:
    """A throwaway redis-server on a free port (nothing saved, its own temporary folder with
    its log), with more `options` ("--replicaof", HOST, PORT ...); returns it and its URL.
    Started by the tests' launcher, as every Redis of the benchmarks (bench/lib/backplanes)."""
    folder = tempfile.mkdtemp(prefix="pushwire-bench-redis-")
    r = RedisSingle(free_port(), dir=Path(folder)).start(*options)
    return Server("redis", r.port, r.pid, r.proc, [folder]), r.url
