"""Drain on SIGTERM (real processes, no container): not ready first while still serving, then
every client is closed with 4200, owed webhooks go out and the cluster state goes, exit 0."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from pushwire.config import ConfigError, load
from tests.conftest import TIMEOUT, cluster_nodes, start_node, stop_node
from tests.helpers.client import Client, data, rest
from tests.helpers.webhooks import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.redis]

HOOK = {"key": "hook-key", "secret": "hook-secret"}


def hook_config(hooks: Receiver) -> str:
    url = f"http://127.0.0.1:{hooks.port}/hook"
    return f"""
        [server]
        port = 0
        log_format = "json"

        [[apps]]
        id = "1"
        key = "hook-key"
        secret = "hook-secret"
        webhook_delay = 0.0
        webhooks = [ {{ url = "{url}", headers = {{ X-Custom = "yes" }} }} ]
    """


async def status(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status


async def closed_with(c: Client) -> tuple[int | None, float]:
    """The code the server told `c` to go with, and when."""
    return await c.told_to_go(), time.monotonic()


async def test_sigterm_drains_then_closes_with_4200_flushes_webhooks_and_exits_0(
    receiver: Receiver,
    tmp_path,
    monkeypatch,
):
    hooks = receiver
    drain = 1.5
    monkeypatch.setenv("PUSHWIRE_DRAIN_DELAY", str(drain))  # (the suite runs with 0)
    proc, port, log = start_node(tmp_path, hook_config(hooks))
    base = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/app/hook-key?protocol=7"
    try:
        before = await Client.connect(ws_url)
        await before.subscribe("drain-room")
        await hooks.wait_for(lambda e: e["name"] == "channel_occupied", "occupied")
        assert await status(base + "/ready") == 200
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        closing = asyncio.create_task(closed_with(before))
        # draining: not ready, still alive, still serving old and new clients
        deadline = time.monotonic() + TIMEOUT
        while await status(base + "/ready") != 503:
            assert time.monotonic() < deadline, "/ready never answered 503"
            await asyncio.sleep(0.02)
        assert await status(base + "/up") == 200
        late = await Client.connect(ws_url)
        await late.subscribe("drain-late")
        code, _ = await rest(
            base,
            "POST",
            "/apps/1/events",
            {"name": "e", "channel": "drain-room", "data": "x"},
            **HOOK,
        )
        assert code == 200
        assert not closing.done()
        late_closing = asyncio.create_task(closed_with(late))
        (code_before, at), (code_late, _) = await asyncio.gather(closing, late_closing)
        assert code_before == 4200 and code_late == 4200
        assert at - signalled >= drain * 0.9  # not before the drain delay
        # (the receiver runs on this loop: wait for the exit without blocking it)
        assert await asyncio.to_thread(proc.wait, TIMEOUT) == 0
        exited = time.monotonic()
        assert exited - signalled < drain + 6
        # what it owed went out before it exited (webhook_delay = 0: due at once)
        vacated = {e["channel"] for e in hooks.events if e["name"] == "channel_vacated"}
        assert {"drain-room", "drain-late"} <= vacated, hooks.events
        text = log.read_text()
        assert "draining" in text and "Traceback" not in text
        for c in (before, late):
            await c.session.close()
    finally:
        if proc.poll() is None:
            stop_node(proc)


async def test_second_signal_cuts_the_drain_short(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHWIRE_DRAIN_DELAY", "60")
    proc, port, _ = start_node(tmp_path, "[server]\nport = 0\n")
    c = await Client.connect(f"ws://127.0.0.1:{port}/app/app-key?protocol=7")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while await status(f"http://127.0.0.1:{port}/ready") != 503:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, _ = await closed_with(c)
    assert code == 4200
    assert proc.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5
    await c.session.close()


async def test_cluster_node_drain_removes_its_members_at_once(redis_server, tmp_path, monkeypatch):
    """The survivors see the drained node's presence members leave when it exits, not a
    node_timeout later (its state is removed, not reaped)."""
    monkeypatch.setenv("PUSHWIRE_DRAIN_DELAY", "0.5")
    with cluster_nodes(redis_server, tmp_path, "[server]\nport = 0\n", "drain") as nodes:
        (proc_a, port_a, _), (_, port_b, _) = nodes
        a = await Client.connect(f"ws://127.0.0.1:{port_a}/app/app-key?protocol=7")
        b = await Client.connect(f"ws://127.0.0.1:{port_b}/app/app-key?protocol=7")
        await b.subscribe("presence-drain", user="staying")
        await a.subscribe("presence-drain", user="leaving")
        await b.recv_event("pusher_internal:member_added")
        proc_a.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        removed = await b.recv_event("pusher_internal:member_removed")
        assert data(removed)["user_id"] == "leaving"
        # after the drain, and at once: reaping would take node_timeout (2 s) after the exit
        assert 0.45 <= time.monotonic() - t0 < 0.5 + 1.5
        assert proc_a.wait(TIMEOUT) == 0
        code, users = await rest(
            f"http://127.0.0.1:{port_b}", "GET", "/apps/app-id/channels/presence-drain/users"
        )
        assert code == 200 and users == {"users": [{"id": "staying"}]}
        for c in (a, b):
            await c.close()


def test_drain_delay_from_the_file_or_the_environment_and_checked(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text("[server]\ndrain_delay = 0.5\n")
    assert load(str(cfg), env={}).server.drain_delay == 0.5
    assert load(str(cfg), env={"PUSHWIRE_DRAIN_DELAY": "7"}).server.drain_delay == 7.0
    assert load(None, env={}).server.drain_delay == 3.0
    for bad in ("-1", "nan", "abc", "99999"):
        with pytest.raises(ConfigError, match=r"(?i)drain_delay"):
            load(None, env={"PUSHWIRE_DRAIN_DELAY": bad})
