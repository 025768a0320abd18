"""The command line: version, routes, and config errors that stop start-up with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushwire", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("pushwire ")


def test_routes():
    r = run("routes")
    assert r.returncode == 0
    assert "POST  /apps/{app_id}/events" in r.stdout
    assert "POST  /users/{user_id}/terminate_connections" in r.stdout
    assert "/app/{key}" in r.stdout


def test_config_error_is_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[apps]]\nid='a'\nkey='k'\nsecret='s'\nmax_conections=5\n")
    r = run("serve", "--config", str(cfg), "--port", "0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(cfg) in lines[0] and "max_conections" in lines[0] and "unknown key" in lines[0]


def test_demo_credentials_warning(tmp_path):
    from tests.conftest import start_server

    srv = start_server(tmp_path, "[server]\nport = 0\n")
    try:
        assert "DEMO credentials" in srv.log.read_text()
    finally:
        srv.stop()
