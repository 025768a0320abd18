"""Every extension point through a real server (one node and a 3-node cluster), the example
module in examples/extensions, `pushwire tap`, and a bad extension stopping start-up."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from tests.conftest import BASE_CONFIG, ROOT, TIMEOUT, cluster_config, start_server
from tests.helpers.client import Client, data, nothing_before_marker, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.node]

EXT = '\n[extensions]\nmodules = ["examples.extensions.push_ext", "tests.extensions.sample_ext"]\n'


@pytest.fixture(scope="module", params=["single", "cluster"])
def ext_server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ext")
    if request.param == "single":
        srv = start_server(tmp, BASE_CONFIG + EXT)
    else:
        redis = request.getfixturevalue("redis_server")
        srv = start_server(tmp, cluster_config(redis, BASE_CONFIG + EXT, prefix="ext"), nodes=3)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()


async def pair(srv, channel="private-ext"):
    a, b = await Client.connect(srv.ws_url()), await Client.connect(srv.ws_url())
    await a.subscribe(channel)
    await b.subscribe(channel)
    return a, b


async def test_message_middleware_reject_modify_short_circuit(ext_server):
    a, b = await pair(ext_server)
    await a.send({"event": "client-msg", "channel": "private-ext", "data": {"text": "buy SPAM"}})
    err = data(await a.recv())
    assert err == {"code": 4304, "message": "Message rejected by the content filter"}
    await a.send({"event": "client-shout", "channel": "private-ext", "data": {"text": "hi"}})
    assert (await b.recv())["data"] == {"text": "HI"}
    await a.send({"event": "client-drop", "channel": "private-ext", "data": {}})
    await a.sync()  # handled (dropped, or published before the marker)
    await nothing_before_marker(ext_server.http, "private-ext", a, b)
    await a.close(), await b.close()


async def test_custom_client_event_handler(ext_server):
    a, b = await pair(ext_server)
    await a.send({"event": "client-whoami", "channel": "private-ext", "data": {}})
    ev = await a.recv()
    assert ev["event"] == "whoami" and ev["data"] == {"socket_id": a.socket_id}
    await nothing_before_marker(ext_server.http, "private-ext", b)  # handled, not broadcast
    await a.close(), await b.close()


async def test_internal_message_type_reaches_every_node_once(ext_server):
    listeners = [await Client.connect(ext_server.ws_url()) for _ in range(3)]
    for c in listeners:
        await c.subscribe("announcements")
    a, b = await pair(ext_server, "private-ann")
    await a.send({"event": "client-announce", "channel": "private-ann", "data": "hello all"})
    for c in listeners:
        ev = await c.recv_event("announcement")
        assert ev["data"] == "hello all"
        await c.nothing(0.2)
    for c in [*listeners, a, b]:
        await c.close()


async def test_api_middleware(ext_server):
    status, body = await rest(ext_server.http, "GET", "/apps/app-id/channels")
    assert status == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(ext_server.http + "/apps/app-id/channels", headers={"X-Block": "1"}) as r:
            assert r.status == 403 and (await r.json())["error"] == "blocked by extension"
        async with s.get(ext_server.http + "/up") as r:  # not an API route: untouched
            assert "X-Ext" not in r.headers


async def test_monitor_sees_raw_and_processed(ext_server):
    c = await Client.connect(ext_server.ws_url())
    await c.subscribe("mon-chan")
    await c.close()
    port = None
    for _ in range(len(ext_server.ports)):  # find the node that served the client
        async with (
            aiohttp.ClientSession() as s,
            s.get(ext_server.http + "/apps/app-id/channels", headers={"X-Monitor-Dump": "1"}) as r,
        ):
            seen = await r.json()
        ins = [e for e in seen if e["kind"] == "in" and e.get("channel") == "mon-chan"]
        if ins:
            port = True
            assert ins[-1]["event"] == "pusher:subscribe"
            assert '"mon-chan"' in ins[-1]["raw"]
            outs = [e for e in seen if e["kind"] == "out" and "mon-chan" in e["raw"]]
            assert "subscription_succeeded" in outs[-1]["raw"]
            break
    assert port, "no node's monitor saw the subscription"


async def test_pushwire_tap(ext_server):
    node = ext_server.ports[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pushwire",
        "tap",
        "--url",
        f"http://127.0.0.1:{node}",
        "--app",
        "app-id",
        "--key",
        "app-key",
        "--secret",
        "app-secret",
        "--channel",
        "tap-",
        "--seconds",
        "6",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
    assert b"tapping app app-id" in line
    await asyncio.sleep(1.5)  # cluster nodes learn of the tap within a heartbeat
    # traffic on every node (a cluster spreads these over all 3), plus another channel
    for i in range(3):
        c = await Client.connect(ext_server.ws_url())
        await c.subscribe(f"tap-{i}")
        await c.subscribe("other-chan")
        await c.close()
    await rest(
        ext_server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "ev", "channel": "tap-api", "data": "x"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    import orjson

    events = [orjson.loads(line) for line in out.splitlines()]
    channels = {e.get("channel") for e in events}
    assert {"tap-0", "tap-1", "tap-2", "tap-api"} <= channels
    assert "other-chan" not in channels
    assert all(e["app"] == "app-id" for e in events)
    if len(ext_server.ports) > 1:
        assert len({e["node"] for e in events}) > 1  # cluster-wide


async def test_tap_refuses_a_bad_secret(ext_server):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pushwire",
            "tap",
            "--url",
            ext_server.http,
            "--app",
            "app-id",
            "--key",
            "app-key",
            "--secret",
            "wrong",
            "--seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 1 and "refused (401)" in r.stderr


def test_bad_extension_stops_start_up(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[extensions]\nmodules = ["no_such_module_xyz"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "pushwire", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 2
    assert "no_such_module_xyz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
