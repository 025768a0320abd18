"""The REST load generator: wrk replaying one pre-signed POST over keep-alive connections (one
request in flight each), and the measured run every scenario makes with it (requests/s,
wrk's latency percentiles, the server's and wrk's own CPU per request).

A Pusher signature stays valid for the server's timestamp window (600 s), so each request
is signed once up front and replayed (same body, same query, same signature).

Needs `wrk` (Debian: `apt-get install -y wrk`; installed here when missing and possible)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.lib.wire import APP_ID, signed_query

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


def signed_request(base: str, endpoint: str, body: Any, tmp: Path) -> tuple[str, Path]:
    """The URL (signed query included) of one replayable POST of `body` (JSON) to
    /apps/{id}/`endpoint` ("events", "batch_events") on `base`, and its body file in `tmp`."""
    raw = orjson.dumps(body)
    path = f"/apps/{APP_ID}/{endpoint}"
    body_file = tmp / f"{endpoint}.json"
    body_file.write_bytes(raw)
    return f"{base}{path}?{signed_query('POST', path, raw)}", body_file


def check_once(url: str, body_file: Path) -> None:
    """One request by hand: the server must answer 200 (a benchmark of 401s proves nothing)."""
    req = urllib.request.Request(
        url, data=body_file.read_bytes(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, answer = resp.status, resp.read()
    if status != 200:
        raise RuntimeError(f"{url}: {status} {answer!r}")


def run_wrk(
    wrk: str, url: str, body_file: Path, tmp: Path, threads: int, connections: int, seconds: float
) -> dict[str, Any]:
    """Run wrk once (`seconds` whole: wrk takes no fractions, at least 1); its summary."""
    script = tmp / "post.lua"
    script.write_text(LUA % {"body": str(body_file)})
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    proc = subprocess.run(
        [*cmd, "--timeout", "5s", "-s", str(script), url], capture_output=True, check=False
    )
    m = re.search(rb"WRK_JSON (\{.*\})", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout!r} {proc.stderr!r}")
    result: dict[str, Any] = json.loads(m.group(1))
    return result


def measured_run(
    wrk: str,
    url: str,
    body_file: Path,
    tmp: Path,
    *,
    threads: int,
    connections: int,
    seconds: float,
    server_cpu: Callable[[], float] | None,
) -> dict[str, Any]:
    """One wrk run with the CPU it cost: requests/s, wrk's latency (a closed loop: from each
    request's send), non-2xx and socket errors, the server's CPU (`server_cpu()`: CPU seconds
    so far, read before and after) and wrk's own (its rusage) per request and in cores.
    `elapsed_s` is the wall time of the run (for other processes' CPU over the same span)."""
    cpu0 = server_cpu() if server_cpu else 0.0
    kids0 = os.times()
    t0 = time.monotonic()
    res = run_wrk(wrk, url, body_file, tmp, threads, connections, seconds)
    elapsed = time.monotonic() - t0
    kids1 = os.times()
    cpu = server_cpu() - cpu0 if server_cpu else 0.0
    gen_cpu = (kids1.children_user - kids0.children_user) + (
        kids1.children_system - kids0.children_system
    )
    n = res["requests"]
    secs = res["duration_us"] / 1e6
    return {
        "requests": n,
        "req_per_s": round(n / secs),
        "p50_ms": round(res["p50_us"] / 1000, 2),
        "p99_ms": round(res["p99_us"] / 1000, 2),
        "max_ms": round(res["max_us"] / 1000, 2),
        "errors": res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"],
        "server_cpu_cores": round(cpu / elapsed, 2) if server_cpu else None,
        "server_us_per_req": round(cpu / n * 1e6, 1) if server_cpu and n else None,
        "wrk_cpu_cores": round(gen_cpu / elapsed, 2),
        "wrk_us_per_req": round(gen_cpu / n * 1e6, 1) if n else None,
        "elapsed_s": round(elapsed, 3),
    }
