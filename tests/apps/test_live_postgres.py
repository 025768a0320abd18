"""Apps in a real PostgreSQL, changed while two real nodes (a cluster over a real Redis) run:
through the CLI and the admin API of one node, seen by the other within a second; disable,
delete, lowered quota, rotation with its grace window, a bad row, the database going away."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest

from tests.conftest import ROOT, TIMEOUT, cluster_config, start_node, stop_node
from tests.helpers.client import Client, rest
from tests.helpers.cluster_checks import ws

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def config(dsn: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
admin_token = "adm"

[apps_store]
kind = "postgres"
dsn = "{dsn}"
reload_interval = 2.0
"""


def cli(cfg_path, *args: str) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "pushwire", "apps", *args, "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT * 3,
    )
    return r.returncode, r.stdout + r.stderr


async def closed_with(c: Client, within: float) -> int:
    async with asyncio.timeout(within):
        while True:
            msg = await c.ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return -1


async def admin(port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            f"http://127.0.0.1:{port}/admin/apps{path}",
            json=body,
            headers={"Authorization": "Bearer adm"},
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_changes_reach_every_node_at_once(pg_dsn, postgres_server, redis_server, tmp_path):
    text = cluster_config(redis_server, config(pg_dsn), prefix="pgapps")
    cfg = tmp_path / "store.toml"
    cfg.write_text(text)
    # the schema and the first apps, with the CLI on the store directly
    assert cli(cfg, "migrate")[0] == 0
    code, out = cli(cfg, "create", "--id", "shop", "--set", "key=shop-key",
                    "--set", "secret=shop-secret", "--json")  # fmt: skip
    assert code == 0 and orjson.loads(out)["id"] == "shop", out
    assert cli(cfg, "create", "--id", "blog", "--set", "key=blog-key", "--set", "secret=b")[0] == 0
    code, out = cli(cfg, "list")
    assert code == 0 and "shop" in out and "blog" in out and out.startswith("ID"), out

    (pa, porta, loga), (pb, portb, logb) = start_node(tmp_path, text), start_node(tmp_path, text)
    try:
        on_b = await Client.connect(ws(portb, "shop-key"))
        # disabled on node A: node B's socket closes (4003) within a second, REST refused there
        t0 = time.monotonic()
        status, body = await admin(porta, "POST", "/shop/disable")
        assert status == 200 and body["enabled"] is False
        assert await closed_with(on_b, 1.0) == 4003
        await on_b.close()
        print(f"disable reached the other node in {time.monotonic() - t0:.3f} s")
        shop_rest = await rest(
            f"http://127.0.0.1:{portb}", "GET", "/apps/shop/channels",
            key="shop-key", secret="shop-secret",
        )  # fmt: skip
        assert shop_rest[0] == 403
        assert (await admin(porta, "POST", "/shop/enable"))[0] == 200

        # the CLI through a running server's admin API
        r = subprocess.run(
            [sys.executable, "-m", "pushwire", "apps", "list", "--json",
             "--url", f"http://127.0.0.1:{portb}", "--token", "adm"],
            capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT * 3,
        )  # fmt: skip
        listed = {a["id"]: a for a in orjson.loads(r.stdout)}
        assert r.returncode == 0 and set(listed) == {"shop", "blog"}, r.stderr
        assert listed["shop"]["enabled"] is True and "connections" in listed["shop"]
        r = subprocess.run(
            [sys.executable, "-m", "pushwire", "apps", "list", "--url",
             f"http://127.0.0.1:{portb}", "--token", "wrong"],
            capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT * 3,
        )  # fmt: skip
        assert r.returncode == 1 and "HTTP 401" in r.stderr

        # a lowered quota refuses new sockets past it on every node
        assert (await admin(porta, "PATCH", "/blog", {"max_connections": 1}))[0] == 200
        await asyncio.sleep(1.0)
        first = await Client.connect(ws(portb, "blog-key"))
        second = await Client.connect(ws(porta, "blog-key"), handshake=False)
        assert (await second.recv())["data"]["code"] == 4004
        await second.close()
        await first.close()

        # rotation: both secrets sign REST and channel auth during the grace, on every node
        status, body = await admin(porta, "POST", "/shop/rotate-secret", {"grace": 60})
        new = body["secret"]
        assert status == 200 and new != "shop-secret"
        assert body["previous_secret"] == "shop-secret"
        await asyncio.sleep(1.0)
        for secret in ("shop-secret", new):
            status, _ = await rest(
                f"http://127.0.0.1:{portb}", "GET", "/apps/shop/channels",
                key="shop-key", secret=secret,
            )  # fmt: skip
            assert status == 200, secret
            c = await Client.connect(ws(portb, "shop-key"))
            ok = await c.subscribe("private-x", key="shop-key", secret=secret)
            assert ok["event"] == "pusher_internal:subscription_succeeded", secret
            await c.close()

        # a bad row: refused with one clear line on each node, the others go on
        import psycopg

        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO pushwire_apps (id, settings) VALUES (%s, %s)",
                ("broken", orjson.dumps({"id": "broken", "key": "k", "max_batch_size": -5})
                 .decode()),
            )  # fmt: skip
            await conn.execute("NOTIFY pushwire_apps, 'broken'")
        await asyncio.sleep(1.0)
        for log in (loga, logb):
            assert "app store: app 'broken'" in log.read_text()
        c = await Client.connect(ws(portb, "blog-key"))
        await c.close()

        # the database goes away: both nodes keep serving from memory and say so once
        postgres_server.stop()
        await asyncio.sleep(2.5)  # a periodic reload fails meanwhile
        c = await Client.connect(ws(portb, "shop-key"))
        assert (await c.subscribe("public"))["event"].endswith("subscription_succeeded")
        await c.close()
        postgres_server.start()
        await asyncio.sleep(0.5)
        on_b = await Client.connect(ws(portb, "blog-key"))
        t0 = time.monotonic()
        status, _ = await admin(porta, "DELETE", "/blog")
        assert status == 200
        assert await closed_with(on_b, 6.0) == 4001  # deleted: 4001, after the outage too
        await on_b.close()
        for log in (loga, logb):
            assert log.read_text().count("app store unreachable") <= 1
    finally:
        stop_node(pa)
        stop_node(pb)
    for log in (loga, logb):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
