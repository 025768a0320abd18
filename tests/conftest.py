"""Shared fixtures: real `pushwire serve` processes on free ports, signed REST helpers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One factor scales every timeout in the tests (raise it on a slow machine).
TIMEOUT = float(os.environ.get("PUSHWIRE_TEST_TIMEOUT_FACTOR", "1")) * 10

BASE_CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_watchlist_events = true

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


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(
        self, key: str = "app-key", query: str = "protocol=7&client=test&version=1.0"
    ) -> str:
        return f"ws://127.0.0.1:{self.port}/app/{key}?{query}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(tmp: Path, config: str, *extra: str) -> Server:
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
        m = re.search(r"listening on http://[\d.]+:(\d+)", log.read_text())
        if m:
            return Server(proc, int(m.group(1)), log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("srv"), BASE_CONFIG)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text(), srv.log.read_text()
