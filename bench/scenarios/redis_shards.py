"""Redis Cluster (issue 19): Redis CPU per published event per shard, and publishes/s, on one
Redis server, a Redis Cluster of 1 shard and one of 3 shards.

Pushwire's own backends publish in this process (`RedisBackend` on the server,
`RedisClusterBackend` on the clusters): one node publishes round-robin over CHANNELS
channels with CONCURRENCY publishes in flight (auto-pipelined as in a server), another node
is subscribed to every channel (its state records and its bus subscriptions: each publish
runs the receiver check and reaches it). With `--history` (the default) each event is
appended to its channel's history as well. The deployments run side by side; each round
measures each of them for SECONDS, in a rotating order, so the machine's drift hits all
alike. Reports, per deployment: publishes/s, the redis-server CPU per publish (all servers,
and per shard: a shard's CPU over the events routed to it), the busiest shard's share, and
the ratios against the one server of the same invocation. From the per-shard CPU: the events
per second one shard holds (1 s / CPU per event), the model's input.

    .venv/bin/python -m bench redis_shards                 # 5 rounds of 2 s, 64 channels
    .venv/bin/python -m bench redis_shards --no-history
    .venv/bin/python -m bench redis_shards --quick

Primaries only (no replicas): a replica costs its primary the replication stream on top.
The client (this process) is Python: on a small machine it, not Redis, caps publishes/s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.lib import procs
from bench.lib.servers import free_port, start_redis, wait_port
from bench.lib.stats import emit, ratio
from bench.scenarios import parse, parser
from pushwire.cluster.base import BusKind, BusMessage, HistoryPolicy, Unavailable, channel_topic
from pushwire.cluster.redis import RedisBackend
from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.cluster.rediscluster import RedisClusterBackend

APP = "bench"
SLOTS = 16384


@dataclass
class Deployment:
    name: str
    url: str
    pids: dict[str, int]  # "host:port" -> redis-server pid
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path | None = None

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_cluster(shards: int) -> Deployment:
    """`shards` cluster-enabled redis-servers (no replicas), met, the slots split evenly."""
    exe = shutil.which("redis-server") or "redis-server"
    workdir = Path(tempfile.mkdtemp(prefix="pushwire-bench-shards-"))
    ports = [free_port() for _ in range(shards)]
    bus = {port: free_port() for port in ports}  # not port + 10000: that may pass 65535
    started = []
    for port in ports:
        home = workdir / str(port)
        home.mkdir()
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        cmd += ["no", "--cluster-enabled", "yes", "--cluster-port", str(bus[port])]
        cmd += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1500"]
        p = subprocess.Popen(cmd, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(p)
        wait_port(port, proc=p)
    clients = [redis.Redis(port=p) for p in ports]
    for client, port in zip(clients, ports, strict=True):
        first = ports.index(port) * SLOTS // shards
        last = (ports.index(port) + 1) * SLOTS // shards - 1
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for other in ports:
            if other != port:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", other, bus[other])
    deadline = time.monotonic() + 30
    while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not come up")
        time.sleep(0.1)
    for c in clients:
        c.close()
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    pids = {f"127.0.0.1:{p}": proc.pid for p, proc in zip(ports, started, strict=True)}
    return Deployment(f"cluster-{shards}", url, pids, started, workdir)


def start_single() -> Deployment:
    server, url = start_redis()
    assert server.popen is not None
    return Deployment("single", url, {f"127.0.0.1:{server.port}": server.pid}, [server.popen])


class Load:
    """A publishing node and a subscribed node on one deployment."""

    def __init__(self, dep: Deployment, channels: int, history: bool) -> None:
        self.dep = dep
        self.topics = [channel_topic(APP, f"ch-{i}") for i in range(channels)]
        self.policy = HistoryPolicy(size=100, ttl=600) if history else None
        self.received = 0
        prefix = f"b{uuid.uuid4().hex[:6]}"
        target = parse_redis_url(dep.url)
        if dep.name == "single":
            self.backends: list[Any] = [RedisBackend(target, target, prefix, n, 30.0) for n in "pr"]
        else:
            self.backends = [RedisClusterBackend(target, prefix, n, 30.0) for n in "pr"]
        self.owner: dict[str, str] = {}  # topic -> the shard's address

    async def start(self) -> None:
        pub, sub = self.backends
        for b in self.backends:
            await b.liveness.register()
        await pub.broker.start(lambda m: None)
        await sub.broker.start(self._got)
        for topic in self.topics:
            await sub.state.subscribe(APP, topic.split(":", 2)[2], None, 0)
            await sub.broker.subscribe(topic)
        only = next(iter(self.dep.pids))
        for topic in self.topics:
            if isinstance(pub, RedisClusterBackend):
                name = pub.keys.bus(topic).encode()
                node = pub.bus_client.nodes_manager.get_node_from_slot(pub.bus_client.keyslot(name))
                self.owner[topic] = node.name
            else:
                self.owner[topic] = only

    def _got(self, msg: BusMessage) -> None:
        self.received += 1

    async def run(self, seconds: float, concurrency: int) -> dict[str, Any]:
        pub = self.backends[0]
        for b in self.backends:  # leases renewed, as a server's heartbeat does
            await b.liveness.beat()
        counts = dict.fromkeys(self.dep.pids, 0)
        failed = 0
        errors: dict[str, int] = {}
        stop = time.monotonic() + seconds
        payload = b'{"event":"e","channel":"x","data":"' + b"x" * 100 + b'"}'

        async def worker(start: int) -> None:
            nonlocal failed
            i = start
            while time.monotonic() < stop:
                topic = self.topics[i % len(self.topics)]
                msg = BusMessage(BusKind.CHANNEL, app=APP, channel=topic, payload=payload)
                try:
                    await pub.broker.publish(topic, msg, self.policy)
                    counts[self.owner[topic]] += 1
                except Unavailable as exc:
                    failed += 1
                    errors[str(exc)[:80]] = errors.get(str(exc)[:80], 0) + 1
                i += concurrency

        cpu0 = {a: procs.cpu_s([pid]) for a, pid in self.dep.pids.items()}
        t0 = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - t0
        cpu = {a: procs.cpu_s([pid]) - cpu0[a] for a, pid in self.dep.pids.items()}
        return {"counts": counts, "cpu": cpu, "seconds": elapsed, "failed": failed} | {
            "errors": errors
        }

    async def close(self) -> None:
        for b in self.backends:
            await b.aclose()


def summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    events = sum(sum(r["counts"].values()) for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    shards = runs[0]["cpu"].keys()
    per_shard = {
        a: 1e6 * sum(r["cpu"][a] for r in runs) / max(1, sum(r["counts"][a] for r in runs))
        for a in shards
    }
    cpu_all = sum(sum(r["cpu"].values()) for r in runs)
    busiest = max(sum(r["cpu"][a] for r in runs) for a in shards)
    return {
        "deployment": name,
        "shards": len(per_shard),
        "publishes_per_s": events / seconds,
        "failed": sum(r["failed"] for r in runs),
        "errors": sorted({e for r in runs for e in r["errors"]}),
        "redis_cpu_us_per_publish": 1e6 * cpu_all / max(1, events),
        "shard_cpu_us_per_publish": {a: round(v, 1) for a, v in per_shard.items()},
        "busiest_shard_cpu_share": busiest / cpu_all if cpu_all else None,
        "events_per_s_one_shard_holds": 1e6 / (sum(per_shard.values()) / len(per_shard)),
    }


async def measure(args: Any) -> list[dict[str, Any]]:
    deps = [start_single(), start_cluster(1), start_cluster(3)]
    loads = [Load(d, args.channels, args.history) for d in deps]
    try:
        for load in loads:
            await load.start()
            await load.run(0.5, args.concurrency)  # warm-up: scripts loaded, pools filled
        runs: dict[str, list[dict[str, Any]]] = {d.name: [] for d in deps}
        for round_ in range(args.rounds):
            order = loads[round_ % len(loads) :] + loads[: round_ % len(loads)]
            for load in order:
                runs[load.dep.name].append(await load.run(args.seconds, args.concurrency))
        rows = [summary(name, r) for name, r in runs.items()]
        base = rows[0]
        for row in rows:
            for key in ("publishes_per_s", "redis_cpu_us_per_publish"):
                row[f"{key}_ratio"] = ratio(row[key], base[key])
        return rows
    finally:
        for load in loads:
            await load.close()
        for d in deps:
            d.stop()


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=64, help="publishes in flight")
    ap.add_argument("--seconds", type=float, default=2.0, help="per deployment and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-history", dest="history", action="store_false")
    args = parse(ap, argv, {"channels": 8, "concurrency": 8, "seconds": 0.5, "rounds": 1})
    emit({"cpus": os.cpu_count(), "load": os.getloadavg(), "args": vars(args)})
    for row in asyncio.run(measure(args)):
        emit(row)


if __name__ == "__main__":
    main()
