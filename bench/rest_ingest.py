#!/usr/bin/env python3
"""REST ingest benchmark: signed POST /apps/{id}/events (one event, one channel, no
subscribers) and /batch_events (10 events), replayed by wrk over keep-alive connections.

Starts Pushwire (`pushwire serve`, one node, memory backend) and soketi 1.6.1 in the same
invocation and drives both with the same load, one after the other; prints one JSON line per
(server, kind) and the ratios Pushwire/soketi. Reported per run: requests/s, latency p50/p99
(wrk's), the server's CPU per request (user+system, its whole process tree) and the load
generator's CPU (wrk's own rusage): when the generator's CPU use is close to one core, it is
the generator, not the server, that saturates.

A Pusher signature stays valid for the server's timestamp window (600 s), so each request
is signed once up front and replayed (same body, same query, same signature).

The machine is shared with other benchmarks: run it under the lock, e.g.

    flock /tmp/pushwire-bench.lock .venv/bin/python bench/rest_ingest.py
    flock /tmp/pushwire-bench.lock .venv/bin/python bench/rest_ingest.py --no-soketi \\
        --profile /tmp/rest.svg            # py-spy --native during Pushwire's events run
    ... bench/rest_ingest.py --baseline /tmp/before   # + an older tree, as pushwire-before
    ... bench/rest_ingest.py --aiohttp   # + this tree without the raw transport's REST fast
                                         # path (PUSHWIRE_REST_FAST_PATH=0), as pushwire-aiohttp
    ... bench/rest_ingest.py --url http://127.0.0.1:6001 --server-pid PID   # existing server

Needs `wrk` (Debian: `apt-get install -y wrk`; installed here when missing and possible).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.fanout import start_soketi, wait_port  # noqa: E402
from pushwire.protocol.signing import sign_rest  # noqa: E402

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
EVENT = {"name": "e", "channels": ["c"], "data": "{}"}
BATCH = {"batch": [{"name": "e", "channel": f"c{i}", "data": "{}"} for i in range(10)]}

# wrk: replay one pre-signed POST; at the end print one JSON line (latency in microseconds)
LUA = """
wrk.method = "POST"
wrk.body = io.open("%(body)s", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install -y wrk")
    return found


def start_pushwire(
    port: int, tmp: Path, tree: str | None = None, fast_path: bool = True
) -> subprocess.Popen[bytes]:
    """`pushwire serve` on `port`: this checkout's, or the `pushwire` package in `tree`;
    `fast_path=False` turns the raw transport's REST fast path off."""
    cfg = tmp / "pushwire.toml"
    cfg.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nlog_level = "warning"\n\n'
        f'[[apps]]\nid = "{APP_ID}"\nkey = "{KEY}"\nsecret = "{SECRET}"\n'
    )
    exe = ROOT / ".venv" / "bin" / "pushwire"
    cmd = [str(exe)] if exe.exists() and not tree else [sys.executable, "-m", "pushwire"]
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    env["PUSHWIRE_REST_FAST_PATH"] = "1" if fast_path else "0"
    proc = subprocess.Popen(
        [*cmd, "serve", "--config", str(cfg)],
        cwd=tree or ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def stop_pid(pid: int, timeout: float = 20) -> None:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def signed_request(base: str, kind: str, tmp: Path) -> tuple[str, Path]:
    """The URL (signed query included) and the body file of one replayable request."""
    body = orjson.dumps(EVENT if kind == "events" else BATCH)
    path = f"/apps/{APP_ID}/{'events' if kind == 'events' else 'batch_events'}"
    query = sign_rest(KEY, SECRET, "POST", path, {}, body)
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    body_file = tmp / f"{kind}.json"
    body_file.write_bytes(body)
    return f"{base}{path}?{qs}", body_file


def check_once(url: str, body_file: Path) -> None:
    """One request by hand: the server must answer 200 (a benchmark of 401s proves nothing)."""
    req = urllib.request.Request(
        url, data=body_file.read_bytes(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, answer = resp.status, resp.read()
    if status != 200:
        raise RuntimeError(f"{url}: {status} {answer!r}")


def tree_cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(
    wrk: str, url: str, body_file: Path, tmp: Path, args: argparse.Namespace, duration: float
) -> dict[str, Any]:
    """Run wrk once; its summary (its CPU is read from the reaped children's times)."""
    script = tmp / "post.lua"
    script.write_text(LUA % {"body": str(body_file)})
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    code = proc.returncode
    m = re.search(rb"WRK_JSON (\{.*\})", out)
    if code != 0 or not m:
        raise RuntimeError(f"wrk failed ({code}): {out.decode()} {err.decode()}")
    result: dict[str, Any] = json.loads(m.group(1))
    return result


def measure(
    name: str,
    base: str,
    pid: int | None,
    kind: str,
    wrk: str,
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    url, body_file = signed_request(base, kind, tmp)
    check_once(url, body_file)
    run_wrk(wrk, url, body_file, tmp, args, args.warmup)  # JIT (soketi), caches, pools
    procs: list[psutil.Process] = []
    if pid is not None:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    profiler = None
    if args.profile and pid is not None and name == "pushwire":
        out = Path(args.profile)
        out = out.with_name(f"{out.stem}-{kind}{out.suffix}")
        spy = ROOT / ".venv" / "bin" / "py-spy"
        profiler = subprocess.Popen(
            [
                str(spy),
                "record",
                "--native",
                "--rate",
                "250",
                "--format",
                "flamegraph" if args.profile.endswith(".svg") else "raw",
                "-o",
                str(out),
                "--pid",
                str(pid),
                "--duration",
                str(int(args.duration)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the load starts
    cpu0 = tree_cpu(procs)
    kids0 = os.times()
    t0 = time.monotonic()
    res = run_wrk(wrk, url, body_file, tmp, args, args.duration)
    elapsed = time.monotonic() - t0
    kids1 = os.times()
    cpu = tree_cpu(procs) - cpu0
    if profiler is not None:
        profiler.wait(60)
    gen_cpu = (kids1.children_user - kids0.children_user) + (
        kids1.children_system - kids0.children_system
    )
    n = res["requests"]
    secs = res["duration_us"] / 1e6
    errors = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
    events = 1 if kind == "events" else len(BATCH["batch"])
    return {
        "server": name,
        "kind": kind,
        "req_per_s": round(n / secs),
        "events_per_s": round(n * events / secs),
        "p50_ms": round(res["p50_us"] / 1000, 2),
        "p99_ms": round(res["p99_us"] / 1000, 2),
        "max_ms": round(res["max_us"] / 1000, 2),
        "errors": errors,
        "server_cpu_cores": round(cpu / elapsed, 2) if procs else None,
        "server_us_per_req": round(cpu / n * 1e6, 1) if procs and n else None,
        "wrk_cpu_cores": round(gen_cpu / elapsed, 2),
        "wrk_us_per_req": round(gen_cpu / n * 1e6, 1) if n else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    args = ap.parse_args()
    wrk = ensure_wrk()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rest-ingest-") as tmpdir:
        tmp = Path(tmpdir)

        def run(name: str, base: str, pid: int | None) -> None:
            for kind in kinds:
                row = measure(name, base, pid, kind, wrk, tmp, args)
                print(json.dumps(row), flush=True)
                rows.append(row)

        for _ in range(args.rounds):
            if args.url:
                run("external", args.url.rstrip("/"), args.server_pid)
                continue
            if args.baseline:
                proc = start_pushwire(args.port, tmp, args.baseline)
                try:
                    run("pushwire-before", f"http://127.0.0.1:{args.port}", proc.pid)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
            if args.aiohttp:
                proc = start_pushwire(args.port, tmp, fast_path=False)
                try:
                    run("pushwire-aiohttp", f"http://127.0.0.1:{args.port}", proc.pid)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
            proc = start_pushwire(args.port, tmp)
            try:
                run("pushwire", f"http://127.0.0.1:{args.port}", proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            if not args.no_soketi:
                pid = start_soketi(args.soketi_port)
                try:
                    run("soketi", f"http://127.0.0.1:{args.soketi_port}", pid)
                finally:
                    stop_pid(pid)

    def median(name: str, kind: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["server"] == name and r["kind"] == kind]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    for kind in kinds:
        for base in ("soketi", "pushwire-before", "pushwire-aiohttp"):
            pw = median("pushwire", kind, "req_per_s")
            other = median(base, kind, "req_per_s")
            if not (pw and other):
                continue
            pw_cpu = median("pushwire", kind, "server_us_per_req")
            other_cpu = median(base, kind, "server_us_per_req")
            cpu_ratio = round(pw_cpu / other_cpu, 2) if pw_cpu and other_cpu else None
            print(
                json.dumps(
                    {
                        "ratio": f"pushwire/{base}",
                        "kind": kind,
                        "rounds": args.rounds,
                        "req_per_s": round(pw / other, 2),
                        "server_cpu_per_req": cpu_ratio,  # below 1: less CPU per request
                    }
                )
            )


if __name__ == "__main__":
    main()
