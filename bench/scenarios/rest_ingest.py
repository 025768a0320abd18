"""REST ingest: signed POST /events and /batch_events replayed by wrk (Pushwire vs soketi).

Requests: /apps/{id}/events (one event, one channel, no subscribers) and /batch_events (10
events), replayed by wrk over keep-alive connections. Starts Pushwire (one node, memory
backend) and soketi 1.6.1 in the same invocation and drives both with the same load, one after
the other; prints one JSON line per (server, kind) and the ratios Pushwire/other. Reported per
run: requests/s, latency p50/p99 (wrk's), the server's CPU per request (user+system, its
whole process tree) and the load generator's CPU (wrk's own rusage): when the generator's CPU
use is close to one core, it is the generator, not the server, that saturates.

A Pusher signature stays valid for the server's timestamp window (600 s), so each request
is signed once up front and replayed (same body, same query, same signature).

The machine is shared with other benchmarks: run it under the lock, e.g.

    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench rest_ingest
    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench rest_ingest --no-soketi \\
        --profile /tmp/rest.svg            # py-spy --native during Pushwire's events run
    ... -m bench rest_ingest --baseline /tmp/before   # + an older tree, as pushwire-before
    ... -m bench rest_ingest --aiohttp   # + this tree without the raw transport's REST fast
                                         # path (PUSHWIRE_REST_FAST_PATH=0), as pushwire-aiohttp
    ... -m bench rest_ingest --url http://127.0.0.1:6001 --server-pid PID   # existing server
    .venv/bin/python -m bench rest_ingest --quick     # a small run to check the tools

Needs `wrk` (Debian: `apt-get install -y wrk`; installed here when missing and possible).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lib import ROOT
from bench.lib.servers import Server, external, start_pushwire, start_soketi
from bench.lib.stats import emit, ratio
from bench.lib.wrk import check_once, ensure_wrk, measured_run, run_wrk, signed_request
from bench.scenarios import parse, parser

EVENT = {"name": "e", "channels": ["c"], "data": "{}"}
BATCH = {"batch": [{"name": "e", "channel": f"c{i}", "data": "{}"} for i in range(10)]}
BASELINES = ("soketi", "pushwire-before", "pushwire-aiohttp")


def py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy --native recording `pid` for `seconds`: a flame graph (.svg) or raw stacks."""
    cmd = [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--native", "--rate", "250"]
    cmd += ["--format", "flamegraph" if out.suffix == ".svg" else "raw", "-o", str(out)]
    cmd += ["--pid", str(pid), "--duration", str(int(seconds))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(srv: Server, kind: str, wrk: str, tmp: Path, args: Any) -> dict[str, Any]:
    endpoint, body = ("events", EVENT) if kind == "events" else ("batch_events", BATCH)
    url, body_file = signed_request(srv.url, endpoint, body, tmp)
    check_once(url, body_file)
    load = {"threads": args.threads, "connections": args.connections}
    run_wrk(wrk, url, body_file, tmp, seconds=args.warmup, **load)  # JIT (soketi), caches
    profiler = None
    if args.profile and srv.pid and srv.name == "pushwire":
        out = Path(args.profile)
        profiler = py_spy(srv.pid, out.with_name(f"{out.stem}-{kind}{out.suffix}"), args.duration)
        time.sleep(1.0)  # attached before the load starts
    cpu = srv.cpu_s if srv.pid else None
    run = measured_run(wrk, url, body_file, tmp, seconds=args.duration, server_cpu=cpu, **load)
    if profiler is not None:
        profiler.wait(60)
    events = 1 if kind == "events" else len(BATCH["batch"])
    row = {"server": srv.name, "kind": kind, "req_per_s": run["req_per_s"]}
    row["events_per_s"] = round(run["req_per_s"] * events)
    drop = ("requests", "req_per_s", "elapsed_s")
    return row | {k: v for k, v in run.items() if k not in drop}


def servers(args: Any) -> list[Callable[[], Server]]:
    """What one round starts (or, --url, takes), in order."""
    port = args.port
    if args.url:
        return [lambda: external(args.url, args.server_pid)]
    out: list[Callable[[], Server]] = []
    if args.baseline:
        out.append(lambda: start_pushwire(port, name="pushwire-before", tree=args.baseline))
    if args.aiohttp:
        no_fast = {"PUSHWIRE_REST_FAST_PATH": "0"}
        out.append(lambda: start_pushwire(port, name="pushwire-aiohttp", env=no_fast))
    out.append(lambda: start_pushwire(port, env={"PUSHWIRE_REST_FAST_PATH": "1"}))
    if not args.no_soketi:
        out.append(lambda: start_soketi(args.soketi_port))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of load before each run")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--rounds", type=int, default=1, help="measure each server this many times")
    ap.add_argument("--kinds", default="events,batch", help="events, batch or both")
    ap.add_argument("--port", type=int, default=7201, help="Pushwire's port (7200-7299)")
    ap.add_argument("--soketi-port", type=int, default=7202)
    ap.add_argument("--no-soketi", action="store_true", help="measure Pushwire only")
    ap.add_argument("--url", help="measure an already running server at this base URL")
    ap.add_argument("--server-pid", type=int, help="its PID (for its CPU)")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the pushwire package in DIR as pushwire-before (e.g. an older "
        "commit: git archive COMMIT pushwire | tar -x -C DIR)",
    )
    ap.add_argument(
        "--aiohttp",
        action="store_true",
        help="also measure this checkout with the REST fast path off (PUSHWIRE_REST_FAST_PATH=0)"
        " as pushwire-aiohttp",
    )
    ap.add_argument(
        "--profile",
        help="py-spy profile of Pushwire's runs, one file per kind (NAME-events.svg ...): "
        ".svg for a flame graph, collapsed stacks for any other suffix",
    )
    args = parse(ap, argv, quick={"duration": 1, "warmup": 1, "no_soketi": True})
    wrk = ensure_wrk()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rest-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        for _ in range(args.rounds):
            for start in servers(args):
                srv = start()
                try:
                    for kind in kinds:
                        rows.append(measure(srv, kind, wrk, tmp, args))
                        emit(rows[-1])
                finally:
                    if srv.popen is not None:
                        srv.stop()

    def median(name: str, kind: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["server"] == name and r["kind"] == kind]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    for kind in kinds:
        for base in BASELINES:
            pw, other = median("pushwire", kind, "req_per_s"), median(base, kind, "req_per_s")
            if not (pw and other):
                continue
            cpu = ratio(
                median("pushwire", kind, "server_us_per_req"),
                median(base, kind, "server_us_per_req"),
            )
            emit(
                {
                    "ratio": f"pushwire/{base}",
                    "kind": kind,
                    "rounds": args.rounds,
                    "req_per_s": ratio(pw, other),
                    "server_cpu_per_req": cpu,  # below 1: less CPU per request
                }
            )
