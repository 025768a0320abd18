"""Apps changed without a restart, with the TOML store: edit the file, send SIGHUP, and the
running node applies it (sockets of a disabled or deleted app closed, REST refused, limits
applied); a bad app is refused with one log line while the others keep working. The admin
API answers 409 on this read-only store."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import textwrap
import time

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, start_node, stop_node
from tests.helpers.client import Client, rest

pytestmark = pytest.mark.slow

APPS = """
[server]
host = "127.0.0.1"
port = 0
admin_token = "adm"

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"

[[apps]]
id = "gone"
key = "gone-key"
secret = "gone-secret"

[[apps]]
id = "off"
key = "off-key"
secret = "off-secret"

[[apps]]
id = "small"
key = "small-key"
secret = "small-secret"
max_connections = 5
"""


def url(port: int, key: str) -> str:
    return f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=t&version=1"


async def closed_with(c: Client) -> int:
    while True:
        msg = await c.ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return -1


async def test_sighup_applies_the_file(tmp_path):
    proc, port, log = start_node(tmp_path, APPS)
    cfg = next(tmp_path.glob("pushwire-*.toml"))
    http = f"http://127.0.0.1:{port}"
    try:
        gone = await Client.connect(url(port, "gone-key"))
        off = await Client.connect(url(port, "off-key"))
        small = [await Client.connect(url(port, "small-key")) for _ in range(3)]
        ok = await Client.connect(url(port, "app-key"))
        text = textwrap.dedent(APPS)
        text = text.replace(
            '[[apps]]\nid = "gone"\nkey = "gone-key"\nsecret = "gone-secret"\n', ""
        )
        text = text.replace('secret = "off-secret"\n', 'secret = "off-secret"\nenabled = false\n')
        text = text.replace("max_connections = 5", "max_connections = 3")
        text += '\n[[apps]]\nid = "bad"\nkey = "bad-key"\nsecret = "s"\nmax_batch_size = -1\n'
        cfg.write_text(text)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        assert await closed_with(gone) == 4001
        assert await closed_with(off) == 4003
        assert time.monotonic() - t0 < 1.0
        # REST for them is refused; the other apps go on
        gone_rest = await rest(
            http, "GET", "/apps/gone/channels", key="gone-key", secret="gone-secret"
        )
        assert gone_rest[0] == 404
        off_rest = await rest(http, "GET", "/apps/off/channels", key="off-key", secret="off-secret")
        assert off_rest[0] == 403
        assert (await ok.subscribe("still-here"))["event"].endswith("subscription_succeeded")
        # the lowered quota refuses new sockets past 3
        extra = await Client.connect(url(port, "small-key"), handshake=False)
        first = await extra.recv()
        assert first["event"] == "pusher:error" and first["data"]["code"] == 4004
        await extra.close()
        # the bad app is refused with one clear line, not loaded
        await asyncio.sleep(0.2)
        text_log = log.read_text()
        assert "app store: app 'bad'" in text_log and "max_batch_size" in text_log
        bad = await Client.connect(url(port, "bad-key"), handshake=False)
        assert (await bad.recv())["data"]["code"] == 4001
        await bad.close()
        for c in [gone, off, ok, *small]:
            await c.close()
    finally:
        stop_node(proc)
    assert "Traceback" not in log.read_text()


async def test_admin_api_on_the_toml_store(tmp_path):
    proc, port, _ = start_node(tmp_path, APPS)
    http = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(http + "/admin/apps") as r:
                assert r.status == 401
            auth = {"Authorization": "Bearer adm"}
            async with s.get(http + "/admin/apps", headers=auth) as r:
                body = await r.json()
                assert r.status == 200
                assert [a["id"] for a in body["apps"]] == ["app-id", "gone", "off", "small"]
                assert body["apps"][0]["connections"] == 0
            async with s.post(http + "/admin/apps/off/disable", headers=auth) as r:
                assert r.status == 409 and "SIGHUP" in (await r.json())["error"]
            async with s.post(
                http + "/admin/apps", headers=auth, data=orjson.dumps({"id": "x", "bad": 1})
            ) as r:
                assert r.status == 400 and "unknown key 'bad'" in (await r.json())["error"]
    finally:
        stop_node(proc)


async def test_admin_api_is_off_without_a_token(tmp_path):
    proc, port, _ = start_node(tmp_path, APPS.replace('admin_token = "adm"\n', ""))
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{port}/admin/apps", headers={"Authorization": "Bearer "})
            as r,
        ):
            assert r.status == 404
    finally:
        stop_node(proc)


async def test_an_open_tap_closes_when_its_app_changes(tmp_path):
    from pushwire.protocol.signing import sign_rest

    proc, port, _ = start_node(tmp_path, APPS)
    cfg = next(tmp_path.glob("pushwire-*.toml"))
    try:
        query = sign_rest("off-key", "off-secret", "GET", "/tap", {"app": "off"}, b"")
        async with aiohttp.ClientSession() as s:
            tap = await s.ws_connect(f"ws://127.0.0.1:{port}/tap", params=query)
            other = sign_rest("app-key", "app-secret", "GET", "/tap", {"app": "app-id"}, b"")
            keeps = await s.ws_connect(f"ws://127.0.0.1:{port}/tap", params=other)
            cfg.write_text(
                textwrap.dedent(APPS).replace('secret = "off-secret"', 'secret = "rotated"')
            )
            proc.send_signal(signal.SIGHUP)  # its secret changed: the stream ends
            msg = await tap.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008
            with contextlib.suppress(TimeoutError):  # another app's stream goes on
                msg = await keeps.receive(timeout=2.0)
                raise AssertionError(f"the other app's tap got {msg}")
            await tap.close()
            await keeps.close()
    finally:
        stop_node(proc)
