"""Backplane topologies (issue 19): a 2-node cluster over one Redis, bus and state apart, Sentinel
and a Redis Cluster, beside a single node; Redis CPU per event; Sentinel failover time.

In one invocation, for each topology in --topologies (one after the other, --rounds times):
  single    one node, no Redis
  one       2 nodes over one redis-server (the baseline of every ratio)
  split     2 nodes, bus_url and state_url on two redis-servers
  sentinel  2 nodes, both roles through redis+sentinel:// (1 primary + 1 replica + 3
            sentinels, down-after-milliseconds 1000)
  cluster   2 nodes over redis+cluster:// (a 3-shard Redis Cluster, no replicas); when this
            checkout's nodes cannot run on it, a row says "not measured" and why
two measurements:
  triggers  wrk (the REST load generator of `rest_ingest`: --connections kept-alive
            connections, one trigger in flight each) replays one signed trigger to node A on
            a channel with one subscriber on each node (so every event crosses the bus):
            triggers/s, the nodes' CPU per trigger, wrk's, and each redis-server's
  fanout    --subscribers picows subscribers on one channel, half on each node, events paced
            at --rate for --seconds through node A: latency from each event's scheduled send
            time, the nodes' CPU per delivered message beside the subscribers' and the
            publisher's, each redis-server's CPU per published event
then ratios against `one` of the same round (median over rounds), and --failovers failovers
of each backplane in --failover-topologies (sentinel, cluster): triggers at --failover-rate
on node A of 2 nodes over a fresh Sentinel set (down-after 1000 ms), or a fresh 3-shard
Redis Cluster with a replica per shard (cluster-node-timeout 1500 ms), the primary (for the
cluster: the one owning the triggered channel's slot) SIGKILLed, the time from the kill to
the first 2xx again (and whether an event answered 2xx went missing at a subscriber); the
old primary back as a replica between runs. With --baseline DIR (another checkout, e.g. a
worktree of main), each failover series runs first with that checkout's nodes, and each
topology of --baseline-topologies is measured with them too, right after this checkout's,
in every round (ratios "T/T@baseline").
Redis CPU is utime + stime from /proc/PID/stat (psutil). Nodes run with the default
node_timeout (6 s) and heartbeat_interval (1 s) unless given.

    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench backplane
    ... -m bench backplane --topologies one,split --rounds 3 --failovers 0
    ... -m bench backplane --topologies "" --failovers 5 --failover-topologies cluster
    ... -m bench backplane --topologies one,cluster --failovers 0 --rounds 5 \
        --baseline ../wt-base --baseline-topologies cluster
    .venv/bin/python -m bench backplane --quick     # a small run to check the tools
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench.lib import procs
from bench.lib.backplanes import Backplane, Topology, sections, start
from bench.lib.failover import (
    ClusterVictim,
    SentinelVictim,
    Victim,
    failover_run,
    wait_accepting,
)
from bench.lib.fanout import fanout_run
from bench.lib.servers import Server, free_port, start_pushwire
from bench.lib.stats import emit, git_commit, ratio, saturation
from bench.lib.subscribers import Spec, Subscribers
from bench.lib.wire import APP_ID, EVENT, ws_url
from bench.lib.wrk import check_once, ensure_wrk, measured_run, run_wrk, signed_request
from bench.scenarios import parse, parser
from pushwire.cluster.base import channel_topic
from pushwire.cluster.rediscluster.keys import ClusterKeys
from pushwire.config import ClusterConfig

BASE = Topology.ONE
GOAL_RATIO = 1.2  # issue 19: split, Sentinel, Cluster within 1.2x of one Redis
FAILOVER_TOPOLOGIES = (Topology.SENTINEL, Topology.CLUSTER)
TRIGGER = {"name": "e", "channel": EVENT, "data": "{}"}  # not a bench event: not parsed
# what is compared with `one`, per phase
COMPARED = {
    "triggers": ("req_per_s", "server_us_per_req", "p99_ms"),
    "fanout": ("server_us_per_msg", "p99_ms", "msgs_per_s"),
}
# the goal's figures: (key, more is better)
GOAL = {"triggers": (("req_per_s", True), ("server_us_per_req", False)),
        "fanout": (("server_us_per_msg", False),)}  # fmt: skip


def node_settings(args: Any) -> dict[str, float]:
    """The nodes' [cluster] timings given on the command line (else their defaults)."""
    given = {"heartbeat_interval": args.heartbeat_interval, "node_timeout": args.node_timeout}
    return {k: v for k, v in given.items() if v is not None}


class NotStarted(Exception):
    """A node did not start over the topology (this checkout does not support it)."""


@contextlib.contextmanager
def cluster_of(
    topology: Topology,
    logs: Path,
    settings: dict[str, float],
    replicas: int = 0,
    tree: str | None = None,
) -> Iterator[tuple[Backplane, list[Server]]]:
    """The topology's Redis (`replicas` per Redis Cluster shard) and its Pushwire nodes
    (their output in `logs`; `settings` in their [cluster]; `tree`: another checkout's
    code, see `start_pushwire`), stopped after."""
    bp = start(topology, replicas)
    nodes: list[Server] = []
    try:
        for i in range(topology.nodes):
            log = logs / f"{topology}-{i}.log"
            name = f"{topology}-{'AB'[i]}"
            try:
                config = sections(bp, **settings)
                node = start_pushwire(
                    free_port(), name=name, sections=config, log=str(log), tree=tree
                )
            except RuntimeError as exc:
                lines = log.read_text().strip().splitlines() if log.exists() else []
                raise NotStarted(f"{exc}: {lines[-1] if lines else ''}") from None
            nodes.append(node)
        yield bp, nodes
    finally:
        for n in nodes:
            n.stop()
        bp.stop()


def per_event(cpu: dict[str, float], events: int) -> dict[str, float]:
    return {role: round(s / max(events, 1) * 1e6, 2) for role, s in cpu.items()}


def triggers(bp: Backplane, nodes: list[Server], wrk: str, tmp: Path, args: Any) -> dict[str, Any]:
    """wrk on node A, one subscriber on each node."""
    urls = tuple(ws_url(f"{n.host}:{n.port}") for n in nodes)
    with Subscribers(Spec(urls), len(nodes)) as subs:
        subs.open(len(nodes))
        url, body = signed_request(nodes[0].url, "events", TRIGGER, tmp)
        check_once(url, body)
        load = {"threads": 1, "connections": args.connections}
        idle0, t_idle = bp.cpu_s(), time.monotonic()
        time.sleep(args.idle)  # the Redis's own background: cron, leases, health checks
        idle = {k: (v - idle0[k]) / (time.monotonic() - t_idle) for k, v in bp.cpu_s().items()}
        run_wrk(wrk, url, body, tmp, seconds=args.warmup, **load)
        redis0, busy0 = bp.cpu_s(), procs.machine_busy()
        each0 = [n.cpu_s() for n in nodes]
        run = measured_run(
            wrk, url, body, tmp, seconds=args.seconds, **load,
            server_cpu=lambda: sum(n.cpu_s() for n in nodes),
        )  # fmt: skip
        each = [n.cpu_s() - c for n, c in zip(nodes, each0, strict=True)]
        busy = procs.machine_busy() - busy0
        redis = {k: v - redis0[k] for k, v in bp.cpu_s().items()}
    secs, n = run["elapsed_s"], run["requests"]
    ours = (run["server_cpu_cores"] + run["wrk_cpu_cores"]) * secs + sum(redis.values())
    return {
        "phase": "triggers",
        **run,
        "node_cores": [round(c / secs, 2) for c in each],  # A (wrk's target), B
        "redis_us_per_event": per_event(redis, n),
        "redis_cores": {k: round(v / secs, 2) for k, v in redis.items()},
        "redis_idle_cores": {k: round(v, 4) for k, v in idle.items()},
        # without that background (its rate over the idle seconds, times the run's)
        "redis_us_per_event_net": per_event({k: v - idle[k] * secs for k, v in redis.items()}, n),
        "others_util": round((busy - ours) / secs, 2),
        "saturated": saturation(
            procs.cores(),
            node=max(each) / secs,
            wrk=run["wrk_cpu_cores"],
            machine=busy / secs,
        ),
    }


def fanout(bp: Backplane, nodes: list[Server], args: Any) -> dict[str, Any]:
    """Paced events through node A, the subscribers spread over the nodes."""
    events = max(1, int(args.rate * args.seconds))
    row = fanout_run(
        nodes[0].name, nodes[0], nodes,
        subscribers=args.subscribers, events=events, procs=args.procs, rate=args.rate,
        sub_servers=nodes, aux=bp.cpu_s,
    )  # fmt: skip
    row["redis_us_per_event"] = per_event(row.pop("aux_cpu_s"), events)
    row["redis_us_per_subscribe"] = per_event(row.pop("aux_open_cpu_s"), args.subscribers)
    return {"phase": "fanout", **row}


def cost(args: Any, wrk: str, tmp: Path) -> list[dict[str, Any]]:
    """Each round: every topology with this checkout's nodes, and those of
    --baseline-topologies with --baseline's nodes right after (code "baseline")."""
    rows = []
    for r in range(args.rounds):
        for topology in args.topologies:
            variants = [("this", None)]
            if topology in args.baseline_topologies:
                variants.append(("baseline", args.baseline))
            for code, tree in variants:
                head = {"topology": topology.value, "code": code, "round": r}
                try:
                    with cluster_of(topology, tmp, node_settings(args), tree=tree) as (bp, nodes):
                        rows.append({**head, **triggers(bp, nodes, wrk, tmp, args)})
                        emit(rows[-1])
                        rows.append({**head, **fanout(bp, nodes, args)})
                        emit(rows[-1])
                except NotStarted as exc:
                    emit({**head, "status": "not measured: the nodes do not start",
                          "error": str(exc)})  # fmt: skip
    return rows


def ratios(rows: list[dict[str, Any]], topologies: list[Topology]) -> None:
    """Each topology against `one`, per round, the median over rounds; and each topology
    measured with the baseline's nodes too against them (this / baseline)."""
    for phase, keys in COMPARED.items():
        mine = [r for r in rows if r["phase"] == phase]
        this = [r for r in mine if r["code"] == "this"]
        base = {r["round"]: r for r in this if r["topology"] == BASE}
        for topology in topologies:
            rounds = [r for r in this if r["topology"] == topology]
            if topology is not BASE and rounds:
                out = compare(rounds, base, keys, f"{topology}/{BASE}", phase)
                if topology is not Topology.SINGLE:
                    out["within_1.2x"] = all(
                        out[k] is not None
                        and (out[k] >= 1 / GOAL_RATIO if more else out[k] <= GOAL_RATIO)
                        for k, more in GOAL[phase]
                    )
                emit(out)
            old = {r["round"]: r for r in mine if r["topology"] == topology and r["code"] != "this"}
            if old:
                emit(compare(rounds, old, keys, f"{topology}/{topology}@baseline", phase))


def compare(
    rows: list[dict[str, Any]], base: dict[int, dict[str, Any]], keys: tuple[str, ...],
    name: str, phase: str,
) -> dict[str, Any]:  # fmt: skip
    """`rows` against `base` of the same round: per key, the rounds' ratios and their median."""
    out: dict[str, Any] = {"ratio": name, "phase": phase}
    for key in keys:
        got = [ratio(r[key], base[r["round"]][key]) for r in rows if r["round"] in base]
        vals = [g for g in got if g is not None]
        out[key] = statistics.median(vals) if vals else None
        out[f"{key}_rounds"] = got
    return out


def victim(bp: Backplane) -> Victim:
    """What a failover of `bp` kills: the Sentinel set's primary, or the shard primary that
    owns the triggered channel's slot."""
    if bp.sentinel is not None:
        return SentinelVictim(bp.sentinel)
    assert bp.redis_cluster is not None
    bus = ClusterKeys(ClusterConfig().key_prefix).bus(channel_topic(APP_ID, EVENT))
    return ClusterVictim(bp.redis_cluster, bus)


def failovers(args: Any, tmp: Path) -> None:
    """--failovers failovers of each of --failover-topologies under triggers on node A, one
    subscriber per node; with --baseline, first with the nodes of that checkout, then with
    this one's, on a fresh backplane each."""
    variants = [("baseline", args.baseline)] if args.baseline else []
    variants.append(("this", None))
    for topology in args.failover_topologies if args.failovers else ():
        for code, tree in variants:
            failover_series(args, tmp, topology, code, tree)


def failover_series(args: Any, tmp: Path, topology: Topology, code: str, tree: str | None) -> None:
    times = []
    head = {"topology": topology.value, "code": code}
    with cluster_of(topology, tmp, node_settings(args), 1, tree) as (bp, nodes):
        target = victim(bp)
        urls = tuple(ws_url(f"{n.host}:{n.port}") for n in nodes)
        with Subscribers(Spec(urls), len(nodes)) as subs:
            subs.open(len(nodes))
            for i in range(args.failovers):
                settle_s = wait_accepting(nodes[0])
                row = failover_run(
                    nodes[0], target.kill, rate=args.failover_rate,
                    before=args.failover_before, window=args.failover_window, subs=subs,
                    switched=target.switched,
                )  # fmt: skip
                emit({"phase": "failover", **head, "run": i, "settle_s": round(settle_s, 2),
                      **row})  # fmt: skip
                times.append(row["recovery_s"])
                target.restore()
    done = sorted(t for t in times if t is not None)
    emit(
        {
            "phase": "failover-summary",
            **head,
            "runs": len(times),
            "recovered": len(done),
            "min_s": done[0] if done else None,
            "median_s": statistics.median(done) if done else None,
            "max_s": done[-1] if done else None,
            "goal_s": target.goal_s,
            "goal_met": len(done) == len(times) and bool(done) and done[-1] <= target.goal_s,
        }
    )


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--topologies", default=",".join(t.value for t in Topology))
    ap.add_argument("--rounds", type=int, default=1, help="measure every topology this often")
    ap.add_argument("--seconds", type=float, default=10, help="per measured run")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of wrk before its run")
    ap.add_argument("--idle", type=float, default=5, help="seconds of Redis background CPU")
    ap.add_argument("--connections", type=int, default=32, help="wrk's connections")
    ap.add_argument("--subscribers", type=int, default=1000, help="fan-out: picows sockets")
    ap.add_argument("--procs", type=int, default=2, help="fan-out: subscriber processes")
    ap.add_argument("--rate", type=float, default=50, help="fan-out: events per second")
    ap.add_argument("--heartbeat-interval", type=float, help="the nodes' (default theirs)")
    ap.add_argument("--node-timeout", type=float, help="the nodes' (default theirs)")
    ap.add_argument("--failovers", type=int, default=5, help="per failover topology")
    ap.add_argument("--failover-topologies", default=",".join(FAILOVER_TOPOLOGIES))
    ap.add_argument("--baseline", help="another checkout: its nodes are measured too")
    ap.add_argument("--baseline-topologies", default="", help="cost: these with --baseline too")
    ap.add_argument("--failover-rate", type=float, default=50, help="triggers per second")
    ap.add_argument("--failover-before", type=float, default=2, help="seconds before the kill")
    ap.add_argument("--failover-window", type=float, default=10, help="seconds after it")
    quick = {"seconds": 1, "warmup": 1, "idle": 1, "subscribers": 100, "rate": 20, "failovers": 1,
             "failover_window": 6}  # fmt: skip
    args = parse(ap, argv, quick)
    args.topologies = [Topology(t.strip()) for t in args.topologies.split(",") if t.strip()]
    args.failover_topologies = [
        Topology(t.strip()) for t in args.failover_topologies.split(",") if t.strip()
    ]
    args.baseline_topologies = [
        Topology(t.strip()) for t in args.baseline_topologies.split(",") if t.strip()
    ]
    if args.baseline_topologies and not args.baseline:
        ap.error("--baseline-topologies needs --baseline")
    if set(args.failover_topologies) - set(FAILOVER_TOPOLOGIES):
        ap.error(f"--failover-topologies: among {', '.join(FAILOVER_TOPOLOGIES)}")
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    emit(
        {
            "scenario": "backplane",
            "commit": git_commit(),
            "redis": version.stdout.split()[2] if version.returncode == 0 else "?",
            "redis_py": redis.__version__,
            "cpus": procs.cores(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "args": {k: [t.value for t in v] if k.endswith("topologies") else v
                     for k, v in vars(args).items()},
        }
    )  # fmt: skip
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-backplane-") as tmpdir:
        tmp = Path(tmpdir)
        rows = cost(args, wrk, tmp)
        ratios(rows, args.topologies)
        failovers(args, tmp)
