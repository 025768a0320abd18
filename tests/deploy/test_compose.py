"""deploy/compose.yaml under podman-compose: Redis, three nodes of the image and HAProxy. The
clients go through the load balancer; one node's container is killed: its clients reconnect
through the load balancer and get events triggered on the other nodes, presence heals within
node_timeout, and `down` leaves no container behind."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from pushwire.client import PushwireClient, authorize_channel
from tests.conftest import ROOT, TIMEOUT, free_port
from tests.deploy import podman as pm
from tests.deploy.conftest import wait_ready
from tests.helpers.client import Client, rest

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.redis]

COMPOSE = ROOT / "deploy" / "compose.yaml"
KEY, SECRET = "app-key", "compose-secret"
NODE_TIMEOUT, HEARTBEAT = 6.0, 1.0  # the defaults the stack runs with
CHANNEL = "presence-ha"


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    port: int
    stats_port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 600) -> str:
        cmd = ["podman-compose", "-p", self.project, "-f", str(COMPOSE), *args]
        return pm.run(self.env, *cmd, timeout=timeout, cwd=COMPOSE.parent).stdout

    def containers(self, running_only: bool = False) -> list[str]:
        args = ["ps", "--filter", f"label=io.podman.compose.project={self.project}"]
        out = pm.podman(
            self.env, *args, *([] if running_only else ["-a"]), "--format", "{{.Names}}"
        ).stdout
        return out.split()

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of the nodes: name -> its CSV statistics row."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5) as r:
            text = r.read().decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == "nodes" and r["svname"] != "BACKEND"}


@pytest.fixture(scope="module")
def stack(podman_env, pushwire_image, base_image) -> Iterator[Stack]:
    if pm.missing_tools(("podman-compose",)):
        if os.environ.get("CI"):
            raise RuntimeError("CI must install podman-compose (see .ci/run)")
        pytest.skip("podman-compose not installed (apt-get install podman-compose)")
    services = pm.services_image(podman_env, base_image)
    s = Stack(f"pwtest{os.getpid()}", {}, free_port(), free_port())
    s.env = {
        **podman_env,
        "PUSHWIRE_IMAGE": pushwire_image.tag,
        "REDIS_IMAGE": services,  # Debian's redis-server and haproxy (no registry here)
        "HAPROXY_IMAGE": services,
        "PUSHWIRE_APP_SECRET": SECRET,
        "PUSHWIRE_LB_BIND": f"127.0.0.1:{s.port}",
        "PUSHWIRE_LB_STATS_BIND": f"127.0.0.1:{s.stats_port}",
    }
    started = time.monotonic()
    try:
        s.compose("up", "-d")
        wait_ready(s.http + "/ready")
        deadline = time.monotonic() + 6 * TIMEOUT
        while [r["status"] for r in s.servers().values()] != ["UP"] * 3:
            assert time.monotonic() < deadline, s.servers()
            time.sleep(0.3)
        print(f"\ncompose up: {time.monotonic() - started:.1f} s")
        yield s
    finally:
        logs = {n: pm.podman(s.env, "logs", n, check=False).stderr for n in s.containers()}
        s.compose("down", "-t", "5")
        left = s.containers()
        for name in left:
            pm.podman(s.env, "rm", "-f", name, check=False)
        pm.podman(s.env, "network", "rm", f"{s.project}_default", check=False)
    assert left == [], f"podman-compose down left {left}"
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"


def presence_client(stack: Stack, user: str) -> PushwireClient:
    def signer(socket_id: str, channel: str) -> dict[str, str]:
        return authorize_channel(KEY, SECRET, socket_id, channel, {"user_id": user})

    return PushwireClient(
        KEY, host="127.0.0.1", port=stack.port, authorizer=signer, max_backoff=2.0
    )


async def users(stack: Stack) -> set[str]:
    status, body = await rest(
        stack.http, "GET", f"/apps/app-id/channels/{CHANNEL}/users", secret=SECRET
    )
    assert status == 200, body
    return {u["id"] for u in body["users"]}


async def test_a_killed_node_clients_reconnect_through_the_lb_and_presence_heals(stack):
    def busy() -> set[str]:
        return {n for n, r in stack.servers().items() if int(r["scur"] or 0) > 0}

    # a socket that will not come back, on the node we are going to kill
    ghost = await Client.connect(f"ws://127.0.0.1:{stack.port}/app/{KEY}?protocol=7")
    await ghost.subscribe(CHANNEL, user="ghost", secret=SECRET)
    victim_nodes = busy()
    assert len(victim_nodes) == 1, stack.servers()
    victim = victim_nodes.pop()
    clients = {f"user-{i}": presence_client(stack, f"user-{i}") for i in range(6)}
    got: dict[str, list[str]] = {u: [] for u in clients}
    for user, c in clients.items():
        await c.connect()
        room = await c.subscribe(CHANNEL)
        room.bind("news", lambda d, meta, user=user: got[user].append(d))
    assert len(busy()) == 3  # the load balancer spread them over the three nodes
    before = {u: c.socket_id for u, c in clients.items()}
    watcher = clients["user-0"]
    removed: list[str] = []
    watcher.channels[CHANNEL].bind("pusher:member_removed", lambda m, meta: removed.append(m["id"]))
    assert await users(stack) == {"ghost", *clients}

    container = f"{stack.project}_{victim}_1"
    pm.podman(stack.env, "kill", container)
    killed = time.monotonic()
    async with asyncio.timeout(TIMEOUT):  # the ghost's connection is gone with its node
        while (await ghost.ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass

    # the killed node's clients come back through the load balancer, to the other nodes
    async with asyncio.timeout(3 * TIMEOUT):
        while not all(
            c.state == "connected" and c.channels[CHANNEL].subscribed for c in clients.values()
        ):
            await asyncio.sleep(0.1)
    moved = [u for u, c in clients.items() if c.socket_id != before[u]]
    assert moved, "no client was on the killed node"
    assert stack.servers()[victim]["status"].startswith("DOWN")

    # presence heals: the ghost is removed (once), every live user stays a member
    async with asyncio.timeout(NODE_TIMEOUT + HEARTBEAT + TIMEOUT):
        while await users(stack) != set(clients):
            await asyncio.sleep(0.2)
        while "ghost" not in removed:
            await asyncio.sleep(0.1)
    healed = time.monotonic() - killed
    assert healed <= NODE_TIMEOUT + HEARTBEAT + 3, f"presence healed after {healed:.1f} s"
    assert removed == ["ghost"], removed  # the moved users never looked gone to the others

    # events triggered through the load balancer (on either surviving node) reach everyone
    for i in range(4):
        status, body = await rest(
            stack.http,
            "POST",
            "/apps/app-id/events",
            {"name": "news", "channel": CHANNEL, "data": f"n{i}"},
            secret=SECRET,
        )
        assert status == 200, body
    async with asyncio.timeout(TIMEOUT):
        while any(len(g) < 4 for g in got.values()):
            await asyncio.sleep(0.05)
    assert all(g == ["n0", "n1", "n2", "n3"] for g in got.values()), got
    print(f"\nkilled {victim}: {len(moved)} clients moved, presence healed in {healed:.1f} s")
    for c in clients.values():
        await c.close()
    await ghost.session.close()
