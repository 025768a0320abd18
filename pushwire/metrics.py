"""Prometheus metrics in the text exposition format, without a client library.

Counters are plain integers bumped on hot paths (one attribute increment); gauges are read
when `/metrics` is scraped. One `Metrics` per server instance, passed to what counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable


class Metrics:
    def __init__(self) -> None:
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0  # frames queued to sockets (one per recipient)
        self.bytes_out = 0  # bytes written to sockets
        self.writes = 0  # socket writes (several frames may share one)
        self.connections_opened = 0
        self.connections_refused = 0
        self.slow_consumers_closed = 0
        self.bus_published = 0  # messages sent to the other nodes
        self.bus_publish_failures = 0  # sends the bus could not confirm (strict ones: 503)
        self.backplane_lost = 0  # times the bus may have dropped messages (sockets told)
        self.bus_received = 0
        self.rest: Counter[tuple[str, int]] = Counter()  # (route, status) -> requests
        # client mistakes and abuse by kind (malformed HTTP, aborted uploads, timeouts, ...)
        self.client_errors: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()  # refusals by limit kind
        self.refused: Counter[str] = Counter()  # handshakes refused by reason (per-IP, origin)
        self.recoveries: Counter[str] = Counter()  # history recoveries: recovered / failed
        # this node wrote its state again: "lost" (it was reaped or the store lost its data)
        # or "store_back" (the shared store was unreachable and is back)
        self.resyncs: Counter[str] = Counter()
        self.gauges: list[Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]] = []

    def render(self) -> str:
        lines: list[str] = []

        def metric(
            name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]
        ) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lab = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

        metric(
            "pushwire_frames_in_total",
            "counter",
            "WebSocket frames received",
            [({}, self.frames_in)],
        )
        metric(
            "pushwire_bytes_in_total", "counter", "WebSocket bytes received", [({}, self.bytes_in)]
        )
        metric(
            "pushwire_frames_out_total",
            "counter",
            "frames queued to sockets",
            [({}, self.frames_out)],
        )
        metric(
            "pushwire_bytes_out_total",
            "counter",
            "bytes written to sockets",
            [({}, self.bytes_out)],
        )
        metric(
            "pushwire_socket_writes_total",
            "counter",
            "socket writes (coalesced frames)",
            [({}, self.writes)],
        )
        metric(
            "pushwire_connections_opened_total",
            "counter",
            "WebSocket connections accepted",
            [({}, self.connections_opened)],
        )
        metric(
            "pushwire_connections_refused_total",
            "counter",
            "connections refused at the handshake",
            [({}, self.connections_refused)],
        )
        metric(
            "pushwire_slow_consumers_closed_total",
            "counter",
            "sockets closed for not reading (4100)",
            [({}, self.slow_consumers_closed)],
        )
        metric(
            "pushwire_bus_published_total",
            "counter",
            "messages published to the other nodes",
            [({}, self.bus_published)],
        )
        metric(
            "pushwire_bus_publish_failures_total",
            "counter",
            "publishes the bus could not confirm (a REST trigger among them answers 503)",
            [({}, self.bus_publish_failures)],
        )
        metric(
            "pushwire_backplane_lost_total",
            "counter",
            "times the bus may have dropped messages for this node (its sockets were closed "
            "with 4200)",
            [({}, self.backplane_lost)],
        )
        metric(
            "pushwire_bus_received_total",
            "counter",
            "messages received from the other nodes",
            [({}, self.bus_received)],
        )
        metric(
            "pushwire_rest_requests_total",
            "counter",
            "REST API requests",
            [({"route": r, "status": str(s)}, n) for (r, s), n in sorted(self.rest.items())],
        )
        metric(
            "pushwire_client_errors_total",
            "counter",
            "client mistakes and refusals by kind (no traceback is logged for them)",
            [({"kind": k}, n) for k, n in sorted(self.client_errors.items())],
        )
        metric(
            "pushwire_rate_limited_total",
            "counter",
            "requests and client events refused by a per-app rate limit (429 / 4301)",
            [({"kind": k}, n) for k, n in sorted(self.rate_limited.items())],
        )
        metric(
            "pushwire_handshakes_refused_total",
            "counter",
            "WebSocket handshakes refused by reason",
            [({"reason": k}, n) for k, n in sorted(self.refused.items())],
        )
        metric(
            "pushwire_history_recoveries_total",
            "counter",
            "subscribes that asked to recover missed events, by result",
            [({"result": k}, n) for k, n in sorted(self.recoveries.items())],
        )
        metric(
            "pushwire_cluster_resyncs_total",
            "counter",
            "times this node wrote its cluster state again, by reason (lost / store_back)",
            [({"reason": k}, n) for k, n in sorted(self.resyncs.items())],
        )
        grouped: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}
        for gauge in self.gauges:
            for name, help_, labels, value in gauge():
                grouped.setdefault(name, ("gauge", help_, []))[2].append((labels, value))
        for name, (kind, help_, samples) in grouped.items():
            metric(name, kind, help_, samples)
        return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

