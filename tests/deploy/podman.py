"""Podman for the deploy tests: a CONTAINERS_CONF of their own, the Debian base images made
with debootstrap (no registry is reachable) and cached, `make image`, and running containers.

The base images are built once per month and package list: the debootstrap tree is kept as a
tarball under $PUSHWIRE_IMAGE_CACHE (default /var/cache/pushwire-test) and imported into
podman's storage, where a later run finds it by its tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

SUITE = "bookworm"
MIRROR = os.environ.get("PUSHWIRE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
SERVICE_PACKAGES = ("haproxy", "redis-server")  # the compose stack's load balancer and Redis
CACHE = Path(os.environ.get("PUSHWIRE_IMAGE_CACHE", "/var/cache/pushwire-test"))
TOOLS = ("podman", "runc", "debootstrap")

# crun fails on this kernel's hybrid cgroups; the sandbox lacks CAP_SYS_RESOURCE (ulimits)
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
pids_limit = 0

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def missing_tools(extra: tuple[str, ...] = ()) -> list[str]:
    return [t for t in (*TOOLS, *extra) if shutil.which(t) is None]


def conf_env(directory: Path) -> dict[str, str]:
    """The environment for podman (and make image): our own CONTAINERS_CONF."""
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(
    env: dict[str, str],
    *args: str,
    check: bool = True,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def podman(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return run(env, "podman", *args, check=check, timeout=timeout)


def _key(*parts: str) -> str:
    month = time.strftime("%Y%m")  # a new base every month picks up Debian's updates
    return hashlib.sha256(" ".join((SUITE, MIRROR, month, *parts)).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time on this machine (parallel sessions share podman's storage)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def base_image(env: dict[str, str]) -> str:
    """`localhost/pushwire-test-base:KEY`: Debian minbase with python3, venv, pip and the CA
    certificates, as the issue's recipe makes it."""
    tag = f"localhost/pushwire-test-base:{_key(*BASE_PACKAGES)}"
    with _locked():
        if podman(env, "image", "exists", tag, check=False).returncode == 0:
            return tag
        tarball = CACHE / f"{tag.rsplit(':', 1)[1]}.tar"
        if not tarball.exists():
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                root = Path(tmp) / "root"
                run(
                    env,
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(BASE_PACKAGES),
                    SUITE,
                    str(root),
                    MIRROR,
                    timeout=1800,
                )
                part = Path(tmp) / "base.tar"
                run(env, "tar", "-C", str(root), "-cf", str(part), ".", timeout=600)
                part.rename(tarball)
            for old in CACHE.glob("*.tar"):  # last month's
                if old != tarball:
                    old.unlink()
        podman(env, "import", str(tarball), tag)
    return tag


def services_image(env: dict[str, str], base: str) -> str:
    """The base plus Debian's HAProxy and Redis: the compose stack runs them from it."""
    tag = f"localhost/pushwire-test-services:{_key(*BASE_PACKAGES, *SERVICE_PACKAGES)}"
    with _locked():
        if podman(env, "image", "exists", tag, check=False).returncode == 0:
            return tag
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "Containerfile").write_text(
                f"FROM {base}\n"
                "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                f"--no-install-recommends {' '.join(SERVICE_PACKAGES)} "
                "&& rm -rf /var/lib/apt/lists/*\n"
            )
            podman(env, "build", "--network", "host", "-t", tag, tmp, timeout=1200)
    return tag


def build_pushwire(env: dict[str, str], base: str, tag: str) -> float:
    """`make image BASE=... TAG=...` (the README's command); returns the seconds it took."""
    started = time.monotonic()
    run(env, "make", "-s", "image", f"BASE={base}", f"TAG={tag}", cwd=ROOT, timeout=1800)
    return time.monotonic() - started


def image_size(env: dict[str, str], tag: str) -> int:
    return int(podman(env, "image", "inspect", tag, "--format", "{{.Size}}").stdout.strip())
