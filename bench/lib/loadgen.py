"""The compiled load generator (bench/loadgen/loadgen.c: C, epoll, well under 1 µs of its own
per message besides the kernel's) and the two measurements made with it: connect + subscribe
throughput (`handshakes`) and paced fan-out to every socket (`paced_fanout`)."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import time
from typing import Any

from bench.lib import procs
from bench.lib.native import LOADGEN_BIN, LOADGEN_SRC, build_c
from bench.lib.publisher import publish
from bench.lib.servers import Server
from bench.lib.stats import hist_pct, merge_hist, saturation
from bench.lib.wire import EVENT, ws_path


class LoadGen:
    """`procs` loadgen processes sharing `conns` sockets on one channel; process i connects
    from 127.0.`src_base + i`.1 and .2 (ephemeral ports are per source address)."""

    def __init__(
        self,
        port: int,
        conns: int,
        procs: int,
        *,
        sample: int = 4,
        inflight: int = 24,
        reconnect: bool = False,
        src_base: int = 100,
        handshake_timeout_ms: int = 0,
    ) -> None:
        binary = build_c(LOADGEN_SRC, LOADGEN_BIN)
        self.conns = conns
        self.procs: list[subprocess.Popen[str]] = []
        per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
        for i, n in enumerate(per):
            src = ",".join(f"127.0.{src_base + i}.{k}" for k in (1, 2))
            cmd = [
                str(binary),
                "--port", str(port),
                "--path", ws_path("loadgen"),
                "--conns", str(n),
                "--src", src,
                "--inflight", str(inflight),
                "--channel", EVENT,
                "--event", EVENT,
                "--sample", str(sample),
                "--reconnect", "1" if reconnect else "0",
                "--id", str(i),
                "--handshake-timeout-ms", str(handshake_timeout_ms),
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
                )
            )
        self.pids = [p.pid for p in self.procs]

    def _send(self, line: str) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()

    @staticmethod
    def _readline(p: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
        out = p.stdout
        assert out is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("load generator did not answer in time")
            r, _, _ = select.select([out], [], [], left)
            if r:
                line = out.readline()
                if not line:
                    raise RuntimeError(f"load generator {p.pid} exited ({p.poll()})")
                return dict(json.loads(line))

    def _gather(self, kind: str, deadline: float) -> list[dict[str, Any]]:
        lines = []
        for p in self.procs:
            while (d := self._readline(p, deadline))["type"] != kind:
                pass
            lines.append(d)
        return lines

    def wait_subscribed(self, timeout: float) -> list[dict[str, Any]]:
        """Block until every process printed its "subscribed" line; returns those lines."""
        try:
            return self._gather("subscribed", time.monotonic() + timeout)
        except TimeoutError:
            raise TimeoutError(
                "not all subscribed: "
                + ", ".join(
                    f"{s['subscribed']}/{s['conns']} (pending {s['pending']}, retrying "
                    f"{s['waiting_retry']}, connect errors {s['connect_errors']}, "
                    f"handshake errors {s['handshake_errors']}, disconnects "
                    f"{s['disconnects']}, close codes {s['close_codes']}, errors "
                    f"{s['error_codes']})"
                    for s in self.report()
                )
            ) from None

    def start_window(self) -> None:
        self._send("start")

    def report(self, timeout: float = 10) -> list[dict[str, Any]]:
        self._send("report")
        return self._gather("report", time.monotonic() + timeout)

    def cpu_s(self) -> float:
        return procs.cpu_s(self.pids)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def handshakes(
    srv: Server, n: int, nprocs: int, *, inflight: int = 24, sample: int = 4, timeout: float = 180
) -> tuple[dict[str, Any], LoadGen]:
    """`n` clients connect and subscribe (time from the first connect to the last
    subscription_succeeded); the figures, and the generator with its sockets still open
    (close it)."""
    cpu0, m0, ld0 = srv.cpu_s(), procs.machine_busy(), procs.listen_drops()
    w0 = time.monotonic()
    gen = LoadGen(srv.port, n, nprocs, inflight=inflight, sample=sample)
    try:
        lines = gen.wait_subscribed(timeout)
    except BaseException:
        gen.close()
        raise
    ld1 = procs.listen_drops()
    wall = time.monotonic() - w0
    cpu1, m1 = srv.cpu_s(), procs.machine_busy()
    first = min(d["t_first_connect_ns"] for d in lines)
    last = max(d["t_last_sub_ns"] for d in lines)
    secs = (last - first) / 1e9
    gen_cpu = [d["cpu_total_s"] for d in lines]
    server_util = (cpu1 - cpu0) / secs
    gen_max = max(gen_cpu) / secs
    row = {
        "server": srv.name,
        "connections": n,
        "handshakes_per_s": round(n / secs),
        "connect_s": round(secs, 3),
        "errors": sum(d["connect_errors"] + d["handshake_errors"] for d in lines),
        "retries": sum(d["retries"] for d in lines),
        "listen_overflows": ld1["ListenOverflows"] - ld0["ListenOverflows"],
        "server_us_per_handshake": round((cpu1 - cpu0) / n * 1e6, 1),
        "gen_us_per_handshake": round(sum(gen_cpu) / n * 1e6, 1),
        "server_util": round(server_util, 2),
        "gen_util_max": round(gen_max, 2),
        "gen_rss_kb_per_conn": round(sum(d["rss_kb"] for d in lines) / n, 2),
        "machine_util": round((m1 - m0) / wall, 2),
        "others_util": round((m1 - m0 - (cpu1 - cpu0) - sum(gen_cpu)) / wall, 2),
        "saturated": saturation(
            procs.cores(), server=server_util, generator=gen_max, machine=(m1 - m0) / wall
        ),
    }
    return row, gen


def paced_fanout(
    srv: Server, gen: LoadGen, rate: float, duration: float, size: int = 100, drain: float = 10
) -> dict[str, Any]:
    """Events at `rate` per second for `duration` seconds to every socket of `gen`:
    delivered, latency from the schedule, each side's CPU per message and use of a core."""
    events = max(1, int(rate * duration))
    gen.start_window()
    cpu0, m0 = srv.cpu_s(), procs.machine_busy()
    res = publish(srv.port, events, rate, size=size)
    expected = res.ok * gen.conns
    deadline = time.monotonic() + drain
    while True:
        reps = gen.report()
        got = sum(r["events"] for r in reps)
        if got >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    t_end = time.monotonic_ns()
    cpu1, m1 = srv.cpu_s(), procs.machine_busy()
    pub_cpu = res.cpu_s  # the publisher's own CPU (this process) while it sent
    window = (t_end - res.start_ns) / 1e9
    server_cpu = cpu1 - cpu0
    gen_cpu = [r["cpu_user_s"] + r["cpu_sys_s"] for r in reps]
    hist = merge_hist(reps)
    server_util = server_cpu / window
    gen_max = max(gen_cpu) / window
    pub_util = pub_cpu / window
    machine = (m1 - m0) / window  # includes the lead-in (signing), slightly under-reported
    d = max(got, 1)
    return {
        "server": srv.name,
        "subscribers": gen.conns,
        "rate": rate,
        "events": events,
        "triggers_ok": res.ok,
        "delivered": got,
        "expected": expected,
        "lost": expected - got,
        "msgs_per_s": round(got / window),
        "p50_ms": hist_pct(hist, 50),
        "p99_ms": hist_pct(hist, 99),
        "p999_ms": hist_pct(hist, 99.9),
        "max_ms": hist_pct(hist, 100),
        "samples": sum(c for _, c in hist),
        "server_us_per_msg": round(server_cpu / d * 1e6, 2),
        "gen_us_per_msg": round(sum(gen_cpu) / d * 1e6, 2),
        "gen_sys_share": round(sum(r["cpu_sys_s"] for r in reps) / max(sum(gen_cpu), 1e-9), 2),
        "pub_us_per_event": round(pub_cpu / max(res.ok, 1) * 1e6, 1),
        "server_util": round(server_util, 2),
        "gen_util_sum": round(sum(gen_cpu) / window, 2),
        "gen_util_max": round(gen_max, 2),
        "pub_util": round(pub_util, 2),
        "machine_util": round(machine, 2),
        # CPU of everything else on the machine (other engineers' tests, the kernel's softirq
        # work not charged to a process): noise
        "others_util": round(machine - server_util - sum(gen_cpu) / window - pub_util, 2),
        "window_s": round(window, 2),
        "saturated": saturation(
            procs.cores(),
            server=server_util,
            generator=gen_max,
            publisher=pub_util,
            machine=machine,
        ),
    }
