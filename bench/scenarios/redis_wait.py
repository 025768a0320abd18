"""What `WAIT 1 <ms>` after each publish pipeline costs (issue 19: history on a replica).

History offsets confirmed on a replica before a publish is answered: starts a redis-server
primary and a replica of it (free ports, nothing saved), loads a script shaped like the
history branch of pushwire/cluster/redis/lua/publish.lua (HINCRBY the topic's top offset,
XADD the event with it, PEXPIRE, PUBLISH it), then for each pipeline size (1 and 32 EVALSHA
calls) and each client count runs the same closed loop without and with `WAIT 1 <ms>` at the
end of every pipeline (same round trip): short slices, the two side by side, their order
swapped every round, so that the machine's drift hits both alike. Reports publishes/s,
p50/p99 latency of a publish (its pipeline's round trip) and the redis-server CPU per publish
(primary and replica), how many WAITs timed out, and for WAIT the ratios against the no-WAIT
baseline of the same invocation: publishes/s as the median of the rounds' paired ratios,
latency and CPU from all rounds pooled.

    .venv/bin/python -m bench redis_wait                  # pipelines 1 and 32, clients 1 and 8
    .venv/bin/python -m bench redis_wait --seconds 1 --rounds 10 --wait-ms 100 --json
    .venv/bin/python -m bench redis_wait --quick          # a small run to check the tools

The client is redis-py's asyncio client (with hiredis when installed), as in Pushwire.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.lib import procs
from bench.lib.servers import Server, start_redis
from bench.lib.stats import emit, percentile_ms, ratio
from bench.scenarios import parse, parser
from tests.helpers.redis_procs import wait_for

PUBLISH = """
local top = redis.call('HINCRBY', KEYS[2], 'top', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], top .. '-0', 'd', ARGV[2], 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], 600000)
redis.call('PEXPIRE', KEYS[2], 600000)
redis.call('PUBLISH', ARGV[4], '@' .. top .. ' e1\\n' .. ARGV[2])
return top
"""
TOPICS = 64


# ------------------------------------------------------------------------------------ load
@dataclass
class Result:
    pipeline: int
    clients: int
    wait: bool
    publishes: int = 0
    seconds: float = 0.0
    wait_short: int = 0  # WAITs that returned before a replica had acknowledged
    latencies: list[int] = field(default_factory=list)  # per pipeline, ns
    cpu_primary: float = 0.0
    cpu_replica: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "pipeline": self.pipeline,
            "clients": self.clients,
            "wait": self.wait,
            "publishes": self.publishes,
            "publishes_per_s": self.publishes / self.seconds,
            "p50_ms": percentile_ms(lat, 50, digits=3),
            "p99_ms": percentile_ms(lat, 99, digits=3),
            "wait_short": self.wait_short,
            "primary_cpu_us_per_publish": 1e6 * self.cpu_primary / self.publishes,
            "replica_cpu_us_per_publish": 1e6 * self.cpu_replica / self.publishes,
        }


async def _client(
    url: str, sha: str, result: Result, wait_ms: int, stop: float, first_topic: int
) -> None:
    client = aioredis.Redis.from_url(url)
    payload = b"x" * 100
    topic = first_topic
    try:
        while time.monotonic() < stop:
            pipe = client.pipeline(transaction=False)
            for _ in range(result.pipeline):
                topic = (topic + 1) % TOPICS
                keys = (f"h:{{t{topic}}}:s", f"h:{{t{topic}}}:m")
                pipe.evalsha(sha, 2, *keys, 100, payload, int(time.time() * 1000), f"c{topic}")
            if result.wait:
                pipe.execute_command("WAIT", 1, wait_ms)
            t0 = time.perf_counter_ns()
            replies = await pipe.execute()
            result.latencies.append(time.perf_counter_ns() - t0)
            result.publishes += result.pipeline
            if result.wait and replies[-1] < 1:
                result.wait_short += 1
    finally:
        await client.aclose()


async def run_case(
    url: str, sha: str, result: Result, seconds: float, wait_ms: int, servers: list[Server]
) -> None:
    cpu0 = [s.cpu_s() for s in servers]
    t0 = time.monotonic()
    stop = t0 + seconds
    await asyncio.gather(
        *(_client(url, sha, result, wait_ms, stop, i * 7) for i in range(result.clients))
    )
    result.seconds += time.monotonic() - t0
    cpu1 = [s.cpu_s() for s in servers]
    result.cpu_primary += cpu1[0] - cpu0[0]
    result.cpu_replica += cpu1[1] - cpu0[1]


async def measure(args: Any, url: str, servers: list[Server]) -> list[dict[str, Any]]:
    sync = redis.Redis.from_url(url)
    wait_for("replica in sync", lambda: sync.info("replication")["connected_slaves"] or None, 20)
    sha = sync.script_load(PUBLISH)
    sync.close()
    cases = [(n, c, w) for n in args.pipelines for c in args.clients for w in (False, True)]
    results = {case: Result(*case) for case in cases}
    paired: dict[tuple[int, int], list[float]] = {(n, c): [] for n, c, _ in results}
    await run_case(url, sha, Result(1, 1, False), 0.5, args.wait_ms, servers)  # warm-up
    for round_ in range(args.rounds):
        for n, c in paired:
            rates = {}
            for w in (False, True) if round_ % 2 == 0 else (True, False):
                res = results[(n, c, w)]
                before = (res.publishes, res.seconds)
                await run_case(url, sha, res, args.seconds, args.wait_ms, servers)
                rates[w] = (res.publishes - before[0]) / (res.seconds - before[1])
            paired[(n, c)].append(rates[True] / rates[False])
    out = []
    for (n, c, w), res in results.items():
        row = res.summary()
        if w:
            base = results[(n, c, False)].summary()
            row["publishes_per_s_ratio"] = statistics.median(paired[(n, c)])
            for key in ("p50_ms", "p99_ms", "primary_cpu_us_per_publish"):
                row[f"{key}_ratio"] = ratio(row[key], base[key])
        out.append(row)
    return out


def table(rows: list[dict[str, Any]], args: Any) -> None:
    print(
        "| pipeline | clients | WAIT | publishes/s | p50 ms | p99 ms | primary CPU us/pub "
        "| replica CPU us/pub | WAIT timed out | ratio pub/s | ratio p50 | ratio p99 "
        "| ratio primary CPU |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        ratios = [r.get(k) for k in ("publishes_per_s_ratio", "p50_ms_ratio", "p99_ms_ratio")]
        ratios.append(r.get("primary_cpu_us_per_publish_ratio"))
        print(
            f"| {r['pipeline']} | {r['clients']} | {'yes' if r['wait'] else 'no'} "
            f"| {r['publishes_per_s']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['primary_cpu_us_per_publish']:.1f} | {r['replica_cpu_us_per_publish']:.1f} "
            f"| {r['wait_short'] if r['wait'] else '-'} | "
            + " | ".join("-" if x is None else f"{x:.2f}x" for x in ratios)
            + " |"
        )
    print(f"({args.rounds} rounds of {args.seconds} s per case; WAIT {args.wait_ms} ms)")


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--pipelines", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--wait-ms", type=int, default=100, help="WAIT's timeout")
    ap.add_argument("--seconds", type=float, default=1.0, help="per case and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="one JSON line per case")
    args = parse(ap, argv, quick={"seconds": 0.2, "rounds": 2})
    emit({"cpus": procs.cores(), "load": os.getloadavg(), "args": vars(args)})
    primary, url = start_redis("--repl-diskless-sync-delay", "0")
    servers = [primary]
    try:
        replica, _ = start_redis("--replicaof", "127.0.0.1", str(primary.port))
        servers.append(replica)
        rows = asyncio.run(measure(args, url, servers))
    finally:
        for s in reversed(servers):
            s.stop()
    if args.json:
        for row in rows:
            emit(row)
    else:
        table(rows, args)
