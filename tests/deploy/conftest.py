"""Fixtures for the container tests (marked `deploy`): podman with a CONTAINERS_CONF of the
tests' own, the cached Debian base image, the Pushwire image built by `make image`, and one
running container of it (credentials from the environment, other apps from a mounted file)."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG, TIMEOUT, free_port
from tests.deploy import podman as pm

INSTALL = "apt-get install podman runc debootstrap podman-compose"


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    missing = pm.missing_tools()
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must install {', '.join(missing)} ({INSTALL}; see .ci/run)")
        pytest.skip(f"{', '.join(missing)} not installed ({INSTALL})")
    return pm.conf_env(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="session")
def base_image(podman_env: dict[str, str]) -> str:
    return pm.base_image(podman_env)


@dataclass
class Built:
    tag: str
    seconds: float
    size: int
    base_size: int


@pytest.fixture(scope="session")
def pushwire_image(podman_env: dict[str, str], base_image: str) -> Iterator[Built]:
    tag = f"localhost/pushwire-test:{os.getpid()}"
    seconds = pm.build_pushwire(podman_env, base_image, tag)
    built = Built(
        tag, seconds, pm.image_size(podman_env, tag), pm.image_size(podman_env, base_image)
    )
    print(
        f"\nimage {tag}: built in {seconds:.0f} s, {built.size / 1e6:.0f} MB "
        f"(base {built.base_size / 1e6:.0f} MB)"
    )
    yield built
    pm.podman(podman_env, "rmi", "-f", tag, check=False)


def wait_ready(url: str, timeout: float = 3 * TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready within {timeout} s")
        time.sleep(0.2)


@dataclass
class Container:
    name: str
    port: int
    env: dict[str, str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        r = pm.podman(self.env, "logs", self.name, check=False)
        return r.stdout + r.stderr

    def exit_code(self) -> int:
        out = pm.podman(self.env, "inspect", self.name, "--format", "{{.State.ExitCode}}")
        return int(out.stdout.strip())


# The apps of the shared test config, but app-id (pusher-js's) comes from the environment.
ENV_APP = {"PUSHWIRE_APP_ID": "app-id", "PUSHWIRE_APP_KEY": "app-key"}


@contextlib.contextmanager
def run_container(env: dict[str, str], image: str, tmp: Path, *extra: str) -> Iterator[Container]:
    """`podman run` the image as an operator would: read-only root filesystem, credentials in
    the environment, the other apps in a config file mounted at /etc/pushwire/pushwire.toml."""
    cfg = tmp / "pushwire.toml"
    cfg.write_text(
        BASE_CONFIG.replace('id = "app-id"', 'id = "file-app"', 1).replace(
            'key = "app-key"', 'key = "file-key"', 1
        )
    )
    cfg.chmod(0o644)
    name = f"pwtest-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    port = free_port()
    args = [
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "-p",
        f"127.0.0.1:{port}:6001",
        "-v",
        f"{cfg}:/etc/pushwire/pushwire.toml:ro",
        "-e",
        "PUSHWIRE_PORT=6001",
        "-e",
        "PUSHWIRE_APP_SECRET=app-secret",
        *(a for k, v in ENV_APP.items() for a in ("-e", f"{k}={v}")),
        *extra,
        image,
    ]
    pm.podman(env, *args)
    c = Container(name, port, env)
    try:
        wait_ready(c.http + "/ready")
        yield c
    finally:
        logs = c.logs()
        pm.podman(env, "rm", "-f", "-t", "0", name, check=False)
    assert "Traceback" not in logs, logs[-3000:]


@pytest.fixture(scope="session")
def container(
    podman_env: dict[str, str], pushwire_image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    with run_container(podman_env, pushwire_image.tag, tmp_path_factory.mktemp("ctr")) as c:
        yield c
