"""`pushwire health`: the probe the image's HEALTHCHECK and exec probes use (no curl)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pushwire.config import load
from pushwire.health import default_url
from tests.conftest import ROOT, TIMEOUT, free_port, start_node, stop_node

pytestmark = pytest.mark.slow


def health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushwire", "health", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_health_follows_readiness_and_the_drain(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHWIRE_DRAIN_DELAY", "30")
    proc, port, _ = start_node(tmp_path, "[server]\nport = 0\n")
    try:
        r = health("--url", f"http://127.0.0.1:{port}/ready")
        assert r.returncode == 0 and '200 {"status": "ready"' in r.stdout, r
        # no --url: this config's own port on the loopback address (here from the env)
        r = health(PUSHWIRE_PORT=str(port), PUSHWIRE_HOST="0.0.0.0")
        assert r.returncode == 0, r
        assert f"http://127.0.0.1:{port}/ready: 200" in r.stdout
        # or from the file PUSHWIRE_CONFIG names (the image's /etc/pushwire/pushwire.toml)
        (tmp_path / "mounted.toml").write_text(f'[server]\nhost = "0.0.0.0"\nport = {port}\n')
        r = health(PUSHWIRE_CONFIG=str(tmp_path / "mounted.toml"))
        assert r.returncode == 0 and f"127.0.0.1:{port}/ready: 200" in r.stdout, r
        proc.send_signal(signal.SIGTERM)  # draining: not ready any more, still alive
        deadline = time.monotonic() + TIMEOUT
        while (r := health("--url", f"http://127.0.0.1:{port}/ready")).returncode == 0:
            assert time.monotonic() < deadline
        assert r.returncode == 1 and "503" in r.stderr and "shutting down" in r.stderr, r
        assert health("--url", f"http://127.0.0.1:{port}/up", "--quiet").returncode == 0
        q = health("--url", f"http://127.0.0.1:{port}/ready", "--quiet")
        assert q.returncode == 1 and q.stdout == q.stderr == ""
        proc.send_signal(signal.SIGTERM)  # a second signal ends the drain
        assert proc.wait(TIMEOUT) == 0
    finally:
        stop_node(proc)


def test_health_nothing_listening_and_port_zero():
    r = health("--url", f"http://127.0.0.1:{free_port()}/ready", "--timeout", "2")
    assert r.returncode == 1 and "unreachable" in r.stderr and "Traceback" not in r.stderr
    r = health(PUSHWIRE_PORT="0")
    assert r.returncode == 2 and "give --url" in r.stderr
    r = health("--url", "not a url")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r


def test_default_url_probes_the_loopback_address_and_the_scheme_in_use(tmp_path):
    env = {"PUSHWIRE_HOST": "0.0.0.0", "PUSHWIRE_PORT": "7001"}
    assert default_url(load(None, env=env)) == "http://127.0.0.1:7001/ready"
    env = {"PUSHWIRE_HOST": "::", "PUSHWIRE_PORT": "7001"}
    assert default_url(load(None, env=env), "/up") == "http://127.0.0.1:7001/up"
    env = {"PUSHWIRE_HOST": "::1", "PUSHWIRE_PORT": "7001"}
    assert default_url(load(None, env=env)) == "http://[::1]:7001/ready"
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f'[server]\nport = 7443\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    assert default_url(load(str(cfg), env={})) == "https://127.0.0.1:7443/ready"
