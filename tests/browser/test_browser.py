"""The browser client (/pushwire.js), the dashboard and the chat example in real headless
Chromium (Debian's package, driven by playwright-core). Screenshots land in docs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TIMEOUT, free_port
from tests.helpers.chromium import BROWSER_DIR, keep_screenshot, node_modules, require_chromium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.node,
    pytest.mark.browser,
]

require_chromium()


def scenario(*args: str) -> dict:
    node_modules()
    r = subprocess.run(
        ["node", str(BROWSER_DIR / "scenarios.js"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 9,
        cwd=BROWSER_DIR,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dashboard_shows_connection_and_triggered_event(server, tmp_path):
    """In a cluster the page's socket and the dashboard are on different nodes."""
    shot = tmp_path / "dashboard.png"
    result = scenario("dashboard", server.http, server.http, "app-secret", str(shot))
    assert result["got"] == [{"hello": "world"}]  # the form's JSON data reached the page
    assert result["connections"] >= 1
    assert "test-channel" in result["channels"]
    assert "test-event" in result["log"]
    assert result["state"] == "connected"
    assert shot.stat().st_size > 10_000
    if len(server.ports) == 1:
        keep_screenshot(shot, "dashboard.png")


def test_two_pages_chat(server, tmp_path):
    if len(server.ports) > 1:
        pytest.skip("the chat scenario runs against the single node")
    port = free_port()
    log = open(tmp_path / "chat.log", "w")  # noqa: SIM115 - closed in finally
    chat = subprocess.Popen(
        [
            sys.executable,
            "examples/chat/app.py",
            "--port",
            str(port),
            "--pushwire-url",
            server.http,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        shot = tmp_path / "chat.png"
        result = scenario("chat", f"http://127.0.0.1:{port}", str(shot))
        assert result["members"] == ["Alice", "Bob"]
        assert "Alice is typing" in result["typing"]
        assert "Alice: hello bob" in result["aliceLog"] and "Bob: hi alice" in result["aliceLog"]
        assert result["bobCountAfter"] == "1"
        keep_screenshot(shot, "chat.png")
    finally:
        chat.terminate()
        chat.wait(10)
        log.close()


async def test_browser_client_reconnects_and_resubscribes(tmp_path):
    import asyncio

    from pushwire.client import AsyncRestClient
    from tests.conftest import start_server

    node_modules()
    port = free_port()
    cfg = f"[server]\nport = {port}\n"
    srv = start_server(tmp_path, cfg)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(BROWSER_DIR / "scenarios.js"),
        "reconnect",
        f"http://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        cwd=BROWSER_DIR,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT * 3)
        assert json.loads(first) == {"stage": "subscribed"}
        srv.stop()  # the page is told 4200, then finds the port closed and backs off
        await asyncio.sleep(1.0)
        srv = start_server(tmp_path, cfg)
        async with AsyncRestClient("app-id", "app-key", "app-secret", port=port) as rest:
            line = b""
            for _ in range(int(TIMEOUT * 4)):
                await rest.trigger("restart-channel", "after", {"ok": True})
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
                    break
                except TimeoutError:
                    continue
        result = json.loads(line)
        assert result["got"][0] == {"ok": True}
        assert result["changedSocket"] is True
        assert "unavailable" in result["states"] and result["states"][-1] == "connected"
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        srv.stop()


async def test_apps_page(tmp_path):
    """The apps page (admin token) against a server whose apps live in PostgreSQL (the admin
    API answers 409 on the read-only TOML store): it shows the live connection, creates,
    disables and rotates, and the admin API sees each change; the token is in no URL."""
    import asyncio
    import secrets

    import aiohttp

    from pushwire.apps.postgres import migrate
    from tests.conftest import start_server
    from tests.pg import start_postgres

    node_modules()
    token = f"adm-{secrets.token_hex(12)}"  # distinctive: looked for in every URL below
    auth = {"Authorization": f"Bearer {token}"}
    pg = start_postgres()
    srv = None
    try:
        cfg = f"""
            [server]
            host = "127.0.0.1"
            port = 0
            admin_token = "{token}"

            [apps_store]
            kind = "postgres"
            dsn = "{pg.dsn}"
        """
        await migrate(pg.dsn)
        srv = start_server(tmp_path, cfg)
        base = srv.http

        async with aiohttp.ClientSession(headers=auth) as http:

            async def admin(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
                async with http.request(method, f"{base}/admin/apps{path}", json=body) as r:
                    return r.status, await r.json()

            for app in (
                {"id": "app-id", "key": "app-key", "secret": "app-secret"},
                {"id": "chat", "key": "chat-key", "max_connections": 500},
            ):
                status, body = await admin("POST", "", app)
                assert status == 201, body
            async with http.get(f"{base}/dashboard/apps") as r:
                assert r.status == 200 and r.headers["X-Frame-Options"] == "DENY"
            async with (
                aiohttp.ClientSession() as client,
                client.ws_connect(srv.ws_url()) as ws,
            ):
                hello = await ws.receive_json(timeout=TIMEOUT)
                assert hello["event"] == "pusher:connection_established"
                shot = tmp_path / "apps.png"
                proc = await asyncio.create_subprocess_exec(
                    "node",
                    str(BROWSER_DIR / "scenarios.js"),
                    "apps",
                    base,
                    token,
                    str(shot),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=BROWSER_DIR,
                )
                try:
                    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 9)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                assert proc.returncode == 0, err.decode()[-3000:]
                result = json.loads(out.decode().strip().splitlines()[-1])
                status, rotated = await admin("GET", "/app-id")
                assert rotated["connections"] == 1  # rotating left the socket open

            # what the page showed is what the API says
            status, refused = await admin("POST", "", {"id": "app-id"})
            assert status == 409
            assert result["createError"] == refused["error"]
            assert "admin API" in result["loginError"]  # the 401's message
            assert not result["errorAfterLogin"] and not result["errorAfterCreate"], result
            assert "app-key" in result["appRow"] and "enabled" in result["appRow"]
            status, made = await admin("GET", "/made-in-browser")
            assert status == 200
            assert made["enabled"] is False and made["max_connections"] == 50
            assert made["secret"] in result["created"] and made["key"] in result["created"]
            assert "disabled" in result["disabledRow"]
            assert "disabled" in result["afterRefresh"]["made"]
            assert rotated["secret"] == result["newSecret"] != "app-secret"
            assert rotated["previous_secret"] == "app-secret"
            assert result["newSecret"] in result["notice"] and "grace" in result["notice"]
            assert len(result["dialogs"]) == 2  # disable and rotate ask first

        # the token went only in the Authorization header: in no URL, no cookie
        assert any(u.endswith("/admin/apps") for u in result["urls"])
        assert not [u for u in result["urls"] if token in u]
        assert result["storage"] == {"local": 0, "cookie": "", "session": ["pushwire-admin"]}
        assert shot.stat().st_size > 10_000
        keep_screenshot(shot, "apps.png")
        srv.stop()
        assert "Traceback" not in srv.log_text(), srv.log_text()
    finally:
        try:
            if srv is not None:
                srv.stop()
        finally:
            pg.close()
