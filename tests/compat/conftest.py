"""The official SDKs against a real server: pusher-js + the `pusher` npm SDK through a node
driver process (driver.js), and the `pusher` PyPI SDK in-process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT

HERE = Path(__file__).resolve().parent
APP = {
    "id": "app-id",
    "key": "app-key",
    "secret": "app-secret",
    "masterKey": "dGhpcyBpcyAzMiBieXRlcyBsb25nIG1hc3RlciBrZXk=",
}


def pytest_configure(config: pytest.Config) -> None:
    if not (HERE / "node_modules" / "pusher-js").exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed for the compatibility tests")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)


class Driver:
    def __init__(self, proc: asyncio.subprocess.Process, server: Any) -> None:
        self.proc = proc
        self.server = server  # each client connects to the next node of a cluster
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg["type"] == "reply":
                fut = self.replies.pop(msg["id"])
                if "error" in msg:
                    fut.set_exception(RuntimeError(msg["error"]))
                else:
                    fut.set_result(msg["result"])
            else:
                self.events.append(msg)
                self.changed.set()

    async def cmd(self, cmd: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies[i] = fut
        self.proc.stdin.write((json.dumps({"id": i, "cmd": cmd, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, TIMEOUT)

    async def expect(self, pred: Callable[[dict[str, Any]], bool], what: str = "") -> dict:
        """Wait for (and consume) the first observed event matching `pred`."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for i, ev in enumerate(self.events):
                    if pred(ev):
                        return self.events.pop(i)
                self.changed.clear()
                try:
                    await self.changed.wait()
                except TimeoutError:
                    break
        raise AssertionError(f"no event {what}; seen: {self.events}")

    async def expect_event(self, client: str, event: str, channel: str | None = None) -> dict:
        return await self.expect(
            lambda e: (
                e.get("client") == client
                and e.get("event") == event
                and (channel is None or e.get("channel") == channel)
            ),
            f"{event} for {client} on {channel}",
        )

    async def none(self, pred: Callable[[dict[str, Any]], bool], wait: float = 0.5) -> None:
        await asyncio.sleep(wait)
        bad = [e for e in self.events if pred(e)]
        assert not bad, bad

    async def connect(self, name: str, app: dict[str, str] = APP, **kw: Any) -> str:
        await self.cmd("connect", name=name, app=app, port=self.server.port, **kw)
        await self.expect(
            lambda e: e == {"type": "state", "client": name, "state": "connected"},
            f"{name} connected",
        )
        sid: str = await self.cmd("socket_id", name=name)
        return sid

    async def subscribe(self, name: str, channel: str) -> dict[str, Any]:
        await self.cmd("subscribe", name=name, channel=channel)
        return await self.expect_event(name, "pusher:subscription_succeeded", channel)

    async def rest(self, method: str, app: dict[str, str] = APP, **args: Any) -> Any:
        return await self.cmd("rest", method=method, app=app, args=args)


@contextlib.asynccontextmanager
async def driver(server: Any, env: dict[str, str] | None = None) -> AsyncIterator[Driver]:
    """The node driver process against `server`; closed (stdin) and awaited afterwards."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / "driver.js"),
        str(server.port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=HERE,
        env=env,
    )
    d = Driver(proc, server)
    yield d
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), TIMEOUT)
    except TimeoutError:
        proc.kill()
    await d.reader


@pytest.fixture
async def js(server: Any) -> AsyncIterator[Driver]:
    async with driver(server) as d:
        yield d
