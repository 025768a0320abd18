"""Channel history and recovery in the browser client (/pushwire.js) in real Chromium: a page
stays open while its server node restarts gracefully (4200) and while events keep coming over
REST through a second node; it ends with every event exactly once, in order, and the right
`pushwire:recovered` / `pushwire:recovery_failed` signals.

The history lives in a real Redis (cluster mode): node A serves the page's WebSocket and is
restarted on the same port; node B (role "api") takes the REST calls, also while A is down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import TIMEOUT, Redis, cluster_config, free_port, start_node, start_redis
from tests.conftest import stop_node as stop_node_sync
from tests.helpers.chromium import BROWSER_DIR, node_modules, require_chromium
from tests.helpers.client import KEY, SECRET, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.node, pytest.mark.browser]

require_chromium()

APPS = """
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
history_size = 1000
history_ttl = 300
history_channels = ["history-"]

[[apps]]
id = "small-id"
key = "small-key"
secret = "small-secret"
history_size = 3
"""

# The page: one client per app; each channel records what its handlers got (data, offset and
# epoch from the metadata) and the recovery signals; every pusher:subscribe frame sent is kept.
SETUP = """
(() => {
  const ws = %s;
  window.sent = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (s) {
    const f = JSON.parse(s);
    if (f.event === 'pusher:subscribe') {
      window.sent.push({ plain: !!window.plain && this === window.plain.ws, data: f.data });
    }
    return send.call(this, s);
  };
  window.rec = {};
  window.states = [];
  function watch(pw, name, label) {
    const r = window.rec[label || name] = { got: [], recovered: [], failed: [], succeeded: 0 };
    const ch = pw.subscribe(name);
    ch.bind('n', (d, meta) => r.got.push({ n: d.n, offset: meta.offset, epoch: meta.epoch }));
    ch.bind('pusher:subscription_succeeded', () => { r.succeeded += 1; });
    ch.bind('pushwire:recovered', (d) => r.recovered.push(d));
    ch.bind('pushwire:recovery_failed', (d) => r.failed.push(d));
  }
  window.pw = new Pushwire({ url: ws, key: 'app-key' });
  window.pw.bind('state_change', (s) => window.states.push(s.current));
  window.clientLevel = 0;  // the client's own emitter gets every event too (each once)
  window.pw.bind('n', () => { window.clientLevel += 1; });
  window.small = new Pushwire({ url: ws, key: 'small-key' });
  window.plain = new Pushwire({ url: ws, key: 'app-key', recover: false });
  watch(window.pw, 'history-room');
  watch(window.pw, 'plain-room');  // no history on this one
  watch(window.small, 'history-small');
  watch(window.plain, 'history-room', 'no-recover');  // a client that did not opt in
  return true;
})()
"""


class Page:
    """The page in Chromium (scenarios.js drive): evaluates expressions in it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def _call(self, op: str, js: str, timeout: float) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        msg = {"op": op, "js": js, "timeout": int(timeout * 1000)}
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout + TIMEOUT)
        assert line, "the page driver ended"
        reply = json.loads(line)
        assert "error" not in reply, reply["error"]
        return reply["ok"]

    async def eval(self, js: str) -> Any:
        return await self._call("eval", js, TIMEOUT)

    async def wait(self, js: str, timeout: float = TIMEOUT * 3) -> Any:
        """Wait until `js` is truthy in the page; returns its value."""
        return await self._call("wait", js, timeout)

    async def rec(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.eval(f"window.rec[{json.dumps(name)}]")
        return result


class Node:
    """Node A: restarted on the same port, so the page's client reconnects to it."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.tmp, self.config = tmp, config
        self.proc, self.port, self.log = start_node(tmp, config)
        self.logs = [self.log]

    async def stop(self) -> None:
        await asyncio.to_thread(stop_node_sync, self.proc)

    async def start(self) -> None:
        self.proc, _, self.log = await asyncio.to_thread(start_node, self.tmp, self.config)
        self.logs.append(self.log)


def config(redis_server: Redis, port: int, role: str = "all") -> str:
    server = f'[server]\nhost = "127.0.0.1"\nport = {port}\nrole = "{role}"\n'
    return cluster_config(redis_server, server + APPS, prefix="hist")


async def test_browser_client_recovers_missed_events_across_restarts(tmp_path):
    node_modules()
    redis_server = start_redis()
    a: Node | None = None
    b = None
    proc = None
    try:
        a = Node(tmp_path, config(redis_server, free_port()))
        b, b_port, b_log = start_node(tmp_path, config(redis_server, 0, role="api"))
        api = f"http://127.0.0.1:{b_port}"
        statuses: list[tuple[str, int, int, Any]] = []  # refused triggers, if any

        async def trigger(channel: str, n: int, app: str = "app-id") -> None:
            key, secret = ("small-key", "small-secret") if app == "small-id" else (KEY, SECRET)
            body = {"name": "n", "channel": channel, "data": json.dumps({"n": n})}
            status, answer = await rest(
                api, "POST", f"/apps/{app}/events", body, key=key, secret=secret
            )
            if status != 200:
                statuses.append((channel, n, status, answer))

        proc = await asyncio.create_subprocess_exec(
            "node",
            str(BROWSER_DIR / "scenarios.js"),
            "drive",
            f"http://127.0.0.1:{a.port}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=BROWSER_DIR,
        )
        page = Page(proc)
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT * 3)
        assert json.loads(ready) == {"ok": "ready"}
        await page.eval(SETUP % json.dumps(f"ws://127.0.0.1:{a.port}"))
        await page.wait(
            "Object.values(window.rec).every((r) => r.succeeded === 1)"
            " && window.pw.channel('history-room').position"
        )

        # Live events: delivered with their positions
        for n in range(1, 6):
            await trigger("history-room", n)
            await trigger("plain-room", n)
        for n in range(1, 3):
            await trigger("history-small", n, app="small-id")
        await page.wait("window.rec['history-room'].got.length === 5")
        await page.wait("window.rec['plain-room'].got.length === 5")
        await page.wait("window.rec['history-small'].got.length === 2")
        room = await page.rec("history-room")
        first_epoch = room["got"][0]["epoch"]
        assert [e["n"] for e in room["got"]] == [1, 2, 3, 4, 5]
        offsets = [e["offset"] for e in room["got"]]
        assert offsets == list(range(offsets[0], offsets[0] + 5))
        plain = await page.rec("plain-room")
        assert [e["n"] for e in plain["got"]] == [1, 2, 3, 4, 5]
        assert all(e.get("offset") is None for e in plain["got"])  # no history, no position

        # A graceful restart of A while events keep coming (through B): before the stop,
        # while A says goodbye (4200), while it is down, and while the page comes back.
        next_n = 6
        running = True

        async def keep_triggering() -> None:
            nonlocal next_n
            while running:
                await trigger("history-room", next_n)
                next_n += 1
                await asyncio.sleep(0.02)

        pump = asyncio.create_task(keep_triggering())
        await asyncio.sleep(0.3)
        await a.stop()
        down_from = next_n
        for n in range(3, 9):  # the small app keeps 3: the page falls too far behind
            await trigger("history-small", n, app="small-id")
        await asyncio.sleep(0.5)
        down_to = next_n
        await a.start()
        await page.wait("window.rec['history-room'].recovered.length === 1", TIMEOUT * 6)
        await asyncio.sleep(0.5)
        running = False
        await pump
        last = next_n - 1
        assert not statuses, statuses
        assert down_to - down_from >= 5  # events did come while A was down
        await page.wait(f"window.rec['history-room'].got.length >= {last}")
        await asyncio.sleep(0.3)  # nothing more may come
        room = await page.rec("history-room")
        assert [e["n"] for e in room["got"]] == list(range(1, last + 1))  # each once, in order
        assert {e["epoch"] for e in room["got"]} == {first_epoch}
        assert [e["offset"] for e in room["got"]] == list(range(offsets[0], offsets[0] + last))
        assert room["failed"] == [] and room["succeeded"] == 2
        assert room["recovered"][0]["epoch"] == first_epoch
        assert room["recovered"][0]["offset"] >= offsets[0] + down_to - 2
        states = await page.eval("window.states")
        assert "unavailable" in states and states[-1] == "connected"

        # the small app's channel lost events: recovery_failed, then live events again
        await page.wait("window.rec['history-small'].failed.length === 1")
        small = await page.rec("history-small")
        assert small["recovered"] == [] and small["succeeded"] == 2
        assert [e["n"] for e in small["got"]] == [1, 2]  # nothing of a gap is replayed
        assert small["failed"][0]["offset"] == small["got"][0]["offset"] + 7
        await trigger("history-small", 9, app="small-id")
        await page.wait("window.rec['history-small'].got.length === 3")
        small = await page.rec("history-small")
        assert small["got"][2]["n"] == 9
        assert small["got"][2]["offset"] == small["failed"][0]["offset"] + 1

        assert await page.eval("window.clientLevel") == last + len(plain["got"])

        # the client with recover: false: no positions, no signals, nothing missed comes back
        plain_client = await page.rec("no-recover")
        got = [e["n"] for e in plain_client["got"]]
        assert got[:5] == [1, 2, 3, 4, 5] and got == sorted(set(got)) and len(got) < last
        assert all(e.get("offset") is None for e in plain_client["got"])
        assert plain_client["recovered"] == plain_client["failed"] == []
        assert plain_client["succeeded"] == 2

        # the channel without history: live events again, no recovery signal either way
        await trigger("plain-room", 6)
        await page.wait("window.rec['plain-room'].got.length === 6")
        plain = await page.rec("plain-room")
        assert plain["recovered"] == [] and plain["failed"] == [] and plain["succeeded"] == 2

        # what the page asked for: {} the first time, then the last position it had
        sent = await page.eval("window.sent")
        by_channel: dict[str, list[Any]] = {}
        for frame in sent:
            if not frame["plain"]:
                by_channel.setdefault(frame["data"]["channel"], []).append(
                    frame["data"].get("recover")
                )
            else:  # the client made with recover: false asks for nothing
                assert "recover" not in frame["data"], frame
        first, resume = by_channel["history-room"]
        assert first == {}
        assert resume["epoch"] == first_epoch
        assert offsets[0] + 4 <= resume["offset"] < offsets[0] + down_to
        assert by_channel["plain-room"] == [{}, {}]  # it never had a position

        # The shared state is lost while A is down (FLUSHALL): the page's position belongs to
        # a history that is gone: recovery_failed, then the new epoch's events
        await a.stop()
        redis.Redis(port=redis_server.port).flushall()
        await a.start()
        await page.wait("window.rec['history-room'].failed.length === 1", TIMEOUT * 6)
        room = await page.rec("history-room")
        assert room["recovered"] and len(room["got"]) == last  # nothing replayed or doubled
        new_epoch = room["failed"][0]["epoch"]
        assert new_epoch != first_epoch
        # B lost its registration too: it refuses events (503, not stored) until the nodes it
        # knew are back or past node_timeout
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            await trigger("history-room", last + 1)
            if not statuses:
                break
            channel, n, status, answer = statuses.pop()
            assert status == 503 and "resynchronising" in answer["error"], answer
            assert asyncio.get_running_loop().time() < deadline, answer
            await asyncio.sleep(0.1)
        await page.wait(f"window.rec['history-room'].got.length === {last + 1}")
        room = await page.rec("history-room")
        assert room["got"][-1] == {
            "n": last + 1,
            "epoch": new_epoch,
            "offset": room["failed"][0]["offset"] + 1,
        }
        assert not statuses, statuses

        # An event lost on the way (the page drops one frame): the next one shows a skipped
        # offset, the client subscribes again from its last position, and the app gets both,
        # in order, once each
        await page.eval(f"window.lose = {last + 2}")
        await page.eval(
            """(() => {
              const real = window.pw._onMessage;
              window.dropped = 0;
              window.pw._onMessage = function (raw) {
                const m = JSON.parse(raw);
                if (!window.dropped && m.event === 'n' && JSON.parse(m.data).n === window.lose) {
                  window.dropped = 1;
                  return;
                }
                return real.call(this, raw);
              };
              return true;
            })()"""
        )
        for n in (last + 2, last + 3, last + 4):
            await trigger("history-room", n)
        await page.wait(f"window.rec['history-room'].got.length === {last + 4}")
        await asyncio.sleep(0.3)  # nothing more may come
        room = await page.rec("history-room")
        assert await page.eval("window.dropped") == 1
        assert [e["n"] for e in room["got"][-4:]] == [last + 1, last + 2, last + 3, last + 4]
        tail = [e["offset"] for e in room["got"][-4:]]
        assert tail == list(range(tail[0], tail[0] + 4))
        assert room["succeeded"] == 4  # the refill subscribed once more
        assert not statuses, statuses
    finally:
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        try:
            if a is not None:
                await a.stop()
            if b is not None:
                stop_node_sync(b)
        finally:
            redis_server.stop()
    logs = "".join(p.read_text() for p in [*a.logs, b_log])
    assert "Traceback" not in logs, logs
