"""The container image, built by `make image BASE=<Debian base made by debootstrap>` and run
by podman: the SDK scenarios pass against it, it runs as non-root on a read-only root
filesystem, carries no compiler or pip, and `podman stop` drains it to exit code 0."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.conftest import ROOT, TIMEOUT
from tests.deploy import podman as pm
from tests.deploy.conftest import Container, run_container
from tests.helpers.client import Client, rest

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.node]


def test_sdk_scenarios_pass_against_the_image(container: Container):
    """pusher-js and the npm `pusher` SDK (tests/compat/test_pusher_js.py) and the PyPI
    `pusher` SDK (test_pusher_python.py), the suite's own scenarios, against the container."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "single",
            "tests/compat/test_pusher_js.py",
            "tests/compat/test_pusher_python.py",
        ],
        cwd=ROOT,
        env={**os.environ, "PUSHWIRE_TEST_EXTERNAL_PORT": str(container.port)},
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT,
    )
    tail = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "failed" not in tail and "skipped" not in tail and int(tail.split()[0]) >= 13, tail


def test_runs_as_non_root_read_only_with_a_health_check(
    container: Container, pushwire_image, podman_env
):
    env = podman_env
    assert pm.podman(env, "exec", container.name, "id", "-u").stdout.strip() == "10001"
    top = pm.podman(env, "top", container.name, "user", "args").stdout
    assert "pushwire" in top and "root" not in top, top
    inspect = json.loads(pm.podman(env, "image", "inspect", pushwire_image.tag).stdout)[0]
    cfg = inspect["Config"]
    assert cfg["User"] == "10001:10001"
    assert "6001/tcp" in cfg["ExposedPorts"]
    assert cfg["StopSignal"] in ("SIGTERM", "15")
    assert "PUSHWIRE_HOST=0.0.0.0" in cfg["Env"]
    assert inspect["Healthcheck"]["Test"] == ["CMD", "pushwire", "health", "--quiet"]
    # the HEALTHCHECK itself, run by podman inside the container (no curl in the image)
    assert pm.podman(env, "healthcheck", "run", container.name).returncode == 0
    # the root filesystem is read-only (podman run --read-only), and the server is fine
    w = pm.podman(env, "exec", container.name, "touch", "/opt/pushwire/x", check=False)
    assert w.returncode != 0 and "Read-only file system" in w.stderr


def test_final_image_has_no_compiler_pip_or_build_dependency(
    container: Container, pushwire_image, podman_env
):
    probe = (
        "import importlib.util, shutil; "
        "print([m for m in ('pip', 'setuptools', 'wheel') if importlib.util.find_spec(m)], "
        "[t for t in ('gcc', 'cc', 'make', 'git', 'curl') if shutil.which(t)])"
    )
    out = pm.podman(podman_env, "exec", container.name, "python", "-c", probe).stdout
    assert out.strip() == "[] []", out
    grown = pushwire_image.size - pushwire_image.base_size
    assert grown < 80e6, f"the image adds {grown / 1e6:.0f} MB to its base"


async def test_env_credentials_and_mounted_config_both_serve(container: Container):
    c = await Client.connect(f"ws://127.0.0.1:{container.port}/app/app-key?protocol=7")
    await c.subscribe("env-chan")
    status, _ = await rest(
        container.http,
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "env-chan", "data": "from env app"},
    )
    assert status == 200 and (await c.recv_event("e"))["data"] == "from env app"
    await c.close()
    status, _ = await rest(
        container.http, "GET", "/apps/file-app/channels", key="file-key", secret="app-secret"
    )
    assert status == 200  # an app of the mounted file


async def test_podman_stop_drains_tells_clients_4200_and_exits_0(
    podman_env, pushwire_image, tmp_path
):
    with run_container(podman_env, pushwire_image.tag, tmp_path) as c:
        clients = [
            await Client.connect(f"ws://127.0.0.1:{c.port}/app/app-key?protocol=7")
            for _ in range(5)
        ]
        for cl in clients:
            await cl.subscribe("stop-chan")

        async def not_ready_seen() -> bool:
            async with aiohttp.ClientSession() as s:
                for _ in range(200):
                    try:
                        async with s.get(c.http + "/ready") as r:
                            if r.status == 503:
                                return True
                    except aiohttp.ClientError:
                        return False
                    await asyncio.sleep(0.05)
            return False

        waits = [asyncio.create_task(cl.told_to_go(3 * TIMEOUT)) for cl in clients]
        started = time.monotonic()
        stop = asyncio.create_task(
            asyncio.to_thread(pm.podman, podman_env, "stop", "-t", "10", c.name)
        )
        assert await not_ready_seen()  # the drain: not ready first, clients still connected
        codes = await asyncio.gather(*waits)
        await stop
        took = time.monotonic() - started
        assert codes == [4200] * len(clients)
        assert c.exit_code() == 0
        assert took < 10, f"podman stop took {took:.1f} s"
        logs = c.logs()
        assert "draining" in logs and "shutting down" in logs
        for cl in clients:
            await cl.session.close()
