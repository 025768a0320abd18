"""A minimal Redis Cluster for the tests: 3 primaries + 3 replicas of redis-server on free
ports (`redis-cli --cluster create`, cluster-node-timeout 1500), each node in a directory of
its own, nothing persisted. The method names follow `RedisClusterSet` of the test topology
helpers (branch `topo`), so that one can replace this one.

- `owner_of(key)` the port of the primary owning the key's (or sharded channel's) slot;
- `kill_primary_of(key)` SIGKILLs it, `wait_failover()` waits for a new owner agreed by all;
- `migrate_slot(slot, to_port)` moves a slot the way `redis-cli --cluster reshard` does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.conftest import TIMEOUT, free_port

HOST = "127.0.0.1"


def command(port: int, *args: Any) -> Any:
    with redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5) as client:
        return client.execute_command(*args)


class RedisClusterSet:
    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1500):
        self.dir = Path(tempfile.mkdtemp(prefix="pushwire-rcluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.bus_ports: dict[int, int] = {}  # not port + 10000: that may pass 65535
        self.killed: list[int] = []
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (apt-get install redis)")
        self._exe = exe
        ports = [free_port() for _ in range(primaries * (1 + replicas))]
        for port in ports:
            self._spawn(port)
        for port in ports:
            self._wait_up(port)
        create = [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports)]
        create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=6 * TIMEOUT)
        if "[OK] All 16384 slots covered" not in done.stdout:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_ok()

    def _spawn(self, port: int) -> None:
        home = self.dir / str(port)
        home.mkdir(exist_ok=True)
        args = [
            self._exe,
            "--port", str(port),
            "--bind", HOST,
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_ports.setdefault(port, free_port())),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "",
            "--appendonly", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            args,
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_up(self, port: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                command(port, "PING")
                return
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.procs)

    def live(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def slot_map(self, port: int | None = None) -> dict[tuple[int, int], int]:
        reply = command(port or self.live()[0], "CLUSTER", "SLOTS")
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in reply}

    def primary_ports(self) -> list[int]:
        return sorted(set(self.slot_map().values()))

    def slot_of(self, key: str | bytes) -> int:
        return int(command(self.live()[0], "CLUSTER", "KEYSLOT", key))

    def owner_of_slot(self, slot: int) -> int:
        for (first, last), port in self.slot_map().items():
            if first <= slot <= last:
                return port
        raise LookupError(f"slot {slot} is not covered")

    def owner_of(self, key: str | bytes) -> int:
        return self.owner_of_slot(self.slot_of(key))

    def node_id(self, port: int) -> str:
        return str(command(port, "CLUSTER", "MYID"))

    def agreed(self) -> dict[tuple[int, int], int] | None:
        """The slot map, when every running node reports it alike, the state is ok, every
        slot is covered and every owner is a running primary; else None."""
        maps = []
        for port in self.live():
            if "cluster_state:ok" not in command(port, "CLUSTER", "INFO"):
                return None
            maps.append(self.slot_map(port))
        if any(m != maps[0] for m in maps):
            return None
        if sum(last - first + 1 for first, last in maps[0]) != 16384:
            return None
        if not set(maps[0].values()) <= set(self.live()):
            return None
        return maps[0]

    def wait_ok(self, timeout: float | None = None) -> dict[tuple[int, int], int]:
        deadline = time.monotonic() + (timeout or 3 * TIMEOUT)
        while True:
            try:
                got = self.agreed()
                if got is not None:
                    return got
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not agree on a complete slot map")
            time.sleep(0.1)

    def kill_primary_of(self, key: str | bytes) -> int:
        """SIGKILL the primary owning the key's slot; returns its port."""
        port = self.owner_of(key)
        self.procs[port].kill()
        self.procs[port].wait()
        self.killed.append(port)
        return port

    def wait_failover(self, timeout: float | None = None) -> None:
        self.wait_ok(timeout)

    def restart_killed(self) -> None:
        """Start the killed nodes again (empty; they rejoin as replicas)."""
        for port in self.killed:
            self._spawn(port)
            self._wait_up(port)
        self.killed = []
        self.wait_ok()

    def migrate_slot(self, slot: int, to_port: int, batch: int = 100, hold: float = 0.0) -> int:
        """Move `slot` and its keys to the primary on `to_port` (SETSLOT IMPORTING /
        MIGRATING, MIGRATE in batches, for `hold` seconds at least: clients get ASK
        meanwhile, then SETSLOT NODE on every primary, the target first); returns the
        previous owner's port."""
        source = self.owner_of_slot(slot)
        src_id, dst_id = self.node_id(source), self.node_id(to_port)
        command(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        deadline = time.monotonic() + hold
        while True:
            keys = command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if keys:
                command(source, "MIGRATE", HOST, to_port, "", 0, 5000, "KEYS", *keys)
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.05)
        others = [p for p in self.primary_ports() if p not in (to_port, source)]
        for port in (to_port, source, *others):
            command(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        deadline = time.monotonic() + 3 * TIMEOUT
        while self.owner_of_slot(slot) != to_port or self.agreed() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"slot {slot} did not move to {to_port}")
            time.sleep(0.05)
        return source

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
