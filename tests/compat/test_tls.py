"""Native TLS (`[server] tls_cert` / `tls_key`): wss:// and https:// on one port, through the
official SDKs, with a self-signed certificate for 127.0.0.1 made for the test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pusher
import pytest
import requests
from pusher.requests import RequestsBackend

from tests.compat.conftest import APP, Driver, driver
from tests.conftest import ROOT, TIMEOUT, Server, start_server
from tests.helpers.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.node]


@dataclass(frozen=True)
class Tls:
    cert: Path  # the server's certificate chain (PEM)
    key: Path  # its key (PEM, unencrypted)
    ca: Path  # what clients trust: the self-signed certificate itself, or trustme's CA


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate (and its key) for 127.0.0.1 and localhost."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-days", "2",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )  # fmt: skip
        return Tls(cert, key, cert)
    trustme = pytest.importorskip("trustme", reason="needs openssl or the trustme package")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return Tls(cert, key, tmp / "ca.pem")


def tls_config(cert: Path | None, key: Path | None) -> str:
    lines = ["[server]", 'host = "127.0.0.1"', "port = 0"]
    if cert is not None:
        lines.append(f'tls_cert = "{cert}"')
    if key is not None:
        lines.append(f'tls_key = "{key}"')
    lines += ["", "[[apps]]", 'id = "app-id"', 'key = "app-key"', 'secret = "app-secret"']
    lines += ["", "[[apps]]", 'id = "1001"', 'key = "py-key"', 'secret = "py-secret"']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tls_server(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("tls-node"), tls_config(tls.cert, tls.key))
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()


def client_ssl(tls: Tls) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca))


async def wss_client(port: int, key: str, tls: Tls) -> Client:
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(
            f"wss://127.0.0.1:{port}/app/{key}?protocol=7&client=test&version=1.0",
            ssl=client_ssl(tls),
            timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT),
        )
    except BaseException:
        await session.close()
        raise
    c = Client(ws, session)
    ev = await c.recv()
    assert ev["event"] == "pusher:connection_established", ev
    c.socket_id = json.loads(ev["data"])["socket_id"]
    return c


@pytest.fixture
async def tls_js(tls_server: Server, tls: Tls) -> AsyncIterator[Driver]:
    """The node driver, trusting the test's certificate (NODE_EXTRA_CA_CERTS)."""
    async with driver(tls_server, {**os.environ, "NODE_EXTRA_CA_CERTS": str(tls.ca)}) as d:
        yield d


def test_log_says_https(tls_server: Server) -> None:
    assert f"listening on https://127.0.0.1:{tls_server.ports[0]}" in tls_server.log_text()


async def rest_tls(js: Driver, method: str, **args: Any) -> Any:
    """`Driver.rest` through the npm SDK made with `useTLS: true`."""
    return await js.cmd("rest", method=method, app=APP, args=args, tls=True)


async def test_pusher_js_over_wss_and_node_sdk_over_https(tls_js: Driver) -> None:
    await tls_js.connect("a", tls=True)
    await tls_js.subscribe("a", "tls-public")
    r = await rest_tls(
        tls_js, "trigger", channels=["tls-public"], event="greet", data={"over": "tls"}
    )
    assert r == {"status": 200, "body": {}}
    ev = await tls_js.expect_event("a", "greet", "tls-public")
    assert ev["data"] == {"over": "tls"}
    # private channels too (signed by the TLS server SDK in the driver)
    await tls_js.subscribe("a", "private-tls")
    r = await rest_tls(tls_js, "trigger", channels="private-tls", event="s", data="x")
    assert r["status"] == 200
    assert (await tls_js.expect_event("a", "s", "private-tls"))["data"] == "x"
    # the same SDK without TLS gets no answer from the TLS port
    r = await tls_js.rest("trigger", channels=["tls-public"], event="greet", data={})
    assert r["status"] is None, r
    await tls_js.none(lambda e: e.get("event") == "greet")


def trusting_backend(tls: Tls) -> type[RequestsBackend]:
    """The PyPI SDK pins its own CA bundle when ssl=True (`verify=` in its options and
    REQUESTS_CA_BUNDLE are both overridden), so its backend is told to trust the test's CA."""

    class Backend(RequestsBackend):  # type: ignore[misc]
        def __init__(self, client: Any, **options: Any) -> None:
            super().__init__(client, **options)
            self.options["verify"] = str(tls.ca)

    return Backend


async def test_pypi_sdk_over_https(tls_server: Server, tls: Tls) -> None:
    port = tls_server.port
    c = await wss_client(port, "py-key", tls)
    try:
        sdk = pusher.Pusher(
            app_id="1001", key="py-key", secret="py-secret", host="127.0.0.1", port=port,
            ssl=True, timeout=TIMEOUT, backend=trusting_backend(tls),
        )  # fmt: skip
        auth = sdk.authenticate("private-py-tls", c.socket_id)
        await c.send({"event": "pusher:subscribe", "data": {"channel": "private-py-tls", **auth}})
        assert (await c.recv())["event"] == "pusher_internal:subscription_succeeded"
        assert await asyncio.to_thread(sdk.trigger, "private-py-tls", "ev", "over-https") == {}
        ev = await c.recv()
        assert ev["event"] == "ev" and ev["data"] == "over-https"
        info = await asyncio.to_thread(sdk.channel_info, "private-py-tls", ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 1}
        # its certificate is really checked: the SDK's own CA bundle does not trust it
        plain = pusher.Pusher(
            app_id="1001", key="py-key", secret="py-secret", host="127.0.0.1", port=port,
            ssl=True, timeout=TIMEOUT,
        )  # fmt: skip
        with pytest.raises(requests.exceptions.SSLError):
            await asyncio.to_thread(plain.trigger, "private-py-tls", "ev", "x")
        # a marker on the channel comes next: the refused trigger published nothing
        assert await asyncio.to_thread(sdk.trigger, "private-py-tls", "marker", "m") == {}
        ev = await c.recv()
        assert (ev["event"], ev["data"]) == ("marker", "m"), ev
    finally:
        await c.close()


async def test_no_plaintext_on_the_tls_port(tls_server: Server, tls: Tls) -> None:
    port = tls_server.ports[0]
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/up") as resp:
                await resp.read()
        with pytest.raises(aiohttp.ClientError):
            await session.ws_connect(f"ws://127.0.0.1:{port}/app/app-key?protocol=7")
        # the node is unharmed: https still answers
        async with session.get(f"https://127.0.0.1:{port}/up", ssl=client_ssl(tls)) as resp:
            assert resp.status == 200


async def test_tls_1_1_is_refused(tls_server: Server, tls: Tls) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(tls.ca))
    try:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    with pytest.raises((ssl.SSLError, ConnectionError)) as err:  # an alert, or just closed
        await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", tls_server.ports[0], ssl=ctx), TIMEOUT
        )
    if "NO_PROTOCOLS_AVAILABLE" in str(err.value).upper():
        pytest.skip("this OpenSSL refuses to offer TLS 1.1 itself")
    # and TLS 1.2 is accepted
    ctx12 = client_ssl(tls)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", tls_server.ports[0], ssl=ctx12), TIMEOUT
    )
    ssl_obj = writer.get_extra_info("ssl_object")
    assert ssl_obj.version() == "TLSv1.2"
    writer.close()
    await writer.wait_closed()


def refused(tmp: Path, config: str) -> str:
    """Run `pushwire serve` with `config`: it must stop at once with exit code 2 and one line
    on stderr, which is returned."""
    cfg = tmp / "refused.toml"
    cfg.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "pushwire", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pushwire: configuration error:"), lines
    return lines[0]


def test_only_cert_or_only_key_is_refused(tls: Tls, tmp_path: Path) -> None:
    line = refused(tmp_path, tls_config(tls.cert, None))
    assert "tls_key" in line
    line = refused(tmp_path, tls_config(None, tls.key))
    assert "tls_cert" in line


def test_missing_or_unreadable_files_are_refused(tls: Tls, tmp_path: Path) -> None:
    line = refused(tmp_path, tls_config(tls.cert, tmp_path / "nope.pem"))
    assert "'tls_key'" in line and "nope.pem" in line
    line = refused(tmp_path, tls_config(tmp_path / "nope.pem", tls.key))
    assert "'tls_cert'" in line and "nope.pem" in line
    locked = tmp_path / "locked.pem"
    locked.write_bytes(tls.key.read_bytes())
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything
            return
        line = refused(tmp_path, tls_config(tls.cert, locked))
        assert "'tls_key'" in line and "cannot read" in line
    finally:
        locked.chmod(0o600)


def test_bad_or_encrypted_key_is_refused(tls: Tls, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    line = refused(tmp_path, tls_config(tls.cert, garbage))
    assert "tls_key" in line and "cannot load" in line
    if shutil.which("openssl") is None:
        return
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(tls.key), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    line = refused(tmp_path, tls_config(tls.cert, encrypted))
    assert "encrypted" in line  # and no password prompt on the terminal
