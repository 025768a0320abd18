"""One measured fan-out: picows subscribers (bench/lib/subscribers.py) on one channel, spread
round-robin over one or more servers, events triggered on one of them by the REST publisher
(back-to-back or paced); what was delivered, how fast, how late, and what it cost each side."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.lib import procs as machine
from bench.lib.publisher import publish
from bench.lib.servers import Server
from bench.lib.stats import percentile_ms, saturation
from bench.lib.subscribers import Accounting, Spec, Subscribers
from bench.lib.wire import ws_url


def fanout_run(
    name: str,
    target: Server,
    servers: Sequence[Server],
    *,
    subscribers: int,
    events: int,
    procs: int,
    rate: float = 0,
    size: int = 100,
    concurrency: int = 1,
    timeout: float = 120,
    sub_servers: Sequence[Server] | None = None,
    aux: Callable[[], Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """`subscribers` sockets in `procs` processes (process i on `sub_servers[i % n]`, default
    the target) get `events` events of `size` bytes triggered on `target`, back-to-back over
    `concurrency` connections or paced at `rate` per second (latency then counts from each
    event's scheduled send time). CPU per delivered message: `servers`' (their process trees),
    `aux`'s (CPU seconds so far by name, e.g. the Redis processes: `aux_cpu_s` per name and
    `redis_us_per_msg` in all; `aux_open_cpu_s` while the sockets subscribed), the
    subscribers' and the publisher's; `saturated` names the
    side closest to its limit. A trigger not answered 200 is an error."""
    urls = tuple(ws_url(f"{s.host}:{s.port}") for s in sub_servers or [target])
    spec = Spec(urls, Accounting.RECEIPTS, timeout=timeout)
    with Subscribers(spec, procs) as subs:
        opening = dict(aux()) if aux else {}
        info = subs.open(subscribers, timeout + 60)
        opened = {k: v - opening[k] for k, v in aux().items()} if aux else {}
        if info["subscribed"] < subscribers:
            raise RuntimeError(f"only {info['subscribed']} subscribed: {info['errors']}")
        subs.count(events)
        measured = [s for s in servers if s.pid]
        cpu0 = [s.cpu_s() for s in measured]
        aux0 = dict(aux()) if aux else {}
        busy0 = machine.machine_busy()
        rss_peak = sum(s.rss() for s in measured)
        conns = max(concurrency, 16) if rate else concurrency
        res = publish(target.port, events, rate, size=size, conns=conns, host=target.host)
        if res.failed:
            raise RuntimeError(f"triggers failed: {res.statuses} {res.error_samples}")
        got = subs.collect(drain=timeout)
        t_end = time.monotonic_ns()
        rss_peak = max(rss_peak, sum(s.rss() for s in measured))
        each = [s.cpu_s() - c for s, c in zip(measured, cpu0, strict=True)]
        cpu = sum(each)
        aux_cpu = {k: v - aux0[k] for k, v in aux().items()} if aux else {}
        busy = machine.machine_busy() - busy0
    lat = got["latencies"]
    n = len(lat)
    elapsed = (t_end - res.start_ns) / 1e9
    redis_cpu = sum(aux_cpu.values())
    others = busy - cpu - redis_cpu - got["cpu_s"] - res.cpu_s  # the rest of the machine
    return {
        "server": name,
        "subscribers": subscribers,
        "events": events,
        "size": size,
        "rate": rate or "back-to-back",
        "delivered": n,
        "expected": subscribers * events,
        "msgs_per_s": round(n / elapsed),
        "elapsed_s": round(elapsed, 3),
        "publish_s": round(res.duration_s, 3),
        "p50_ms": percentile_ms(lat, 50),
        "p99_ms": percentile_ms(lat, 99),
        "max_ms": percentile_ms(lat, 100),
        "server_cpu_s": round(cpu, 2) if measured else None,
        # CPU per delivered message, in microseconds: the server's, Redis's (cluster), and the
        # subscribers' (if it is close to the server's, the subscribers are what saturates)
        "server_us_per_msg": round(cpu / n * 1e6, 2) if measured and n else None,
        "redis_us_per_msg": round(redis_cpu / n * 1e6, 2) if aux and n else None,
        "client_us_per_msg": round(got["cpu_s"] / n * 1e6, 2) if n else None,
        "pub_us_per_event": round(res.cpu_s / max(res.ok, 1) * 1e6, 1),
        "server_rss_mb": round(rss_peak / 2**20, 1) if measured else None,
        "aux_cpu_s": {k: round(v, 3) for k, v in aux_cpu.items()},
        "aux_open_cpu_s": {k: round(v, 3) for k, v in opened.items()},  # while subscribing
        "others_util": round(others / elapsed, 2),
        "saturated": saturation(
            machine.cores(),
            server=max(each, default=0.0) / elapsed,  # the busiest node: one event loop
            subscriber=got["busiest"],
            publisher=res.cpu_s / elapsed,
            machine=busy / elapsed,
        ),
    }
