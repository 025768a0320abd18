"""One socket floods a node with frames; another one pings it throughout (issue 17).

Reports the node's RSS growth and the other socket's worst and p99 `pusher:ping` round trip
(one every 10 ms, from before the flood until the node is quiet again), for this checkout and
(`--baseline-tree`) an earlier one, in one invocation:

    git archive <commit> | tar -x -C /tmp/pw-before
    python -m bench flood --baseline-tree /tmp/pw-before

The flooding and measuring live in tests/helpers/flood.py: tests/server/test_rawws_flood.py
runs the same flood as a test.
"""

from __future__ import annotations

import asyncio
import json

from bench.lib.servers import free_port, start_pushwire
from bench.scenarios import parse, parser
from tests.helpers.flood import EMPTY_TEXT, flood


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--unit", default=EMPTY_TEXT.hex(), help="the frame sent, in hex")
    ap.add_argument("--baseline-tree", help="also run Pushwire from this checkout, first")
    ap.add_argument("--port", type=int, default=0, help="0: a free one")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--limit", type=float, default=600.0, help="seconds per run at most")
    args = parse(ap, argv, {"frames": 100_000, "limit": 60.0})
    port = args.port or free_port()
    servers = [("before", args.baseline_tree)] if args.baseline_tree else []
    servers.append(("after" if args.baseline_tree else "pushwire", None))
    rows = []
    for _ in range(args.rounds):
        for name, tree in servers:
            server = start_pushwire(port, name=name, tree=tree)
            try:
                r = asyncio.run(
                    flood(
                        port,
                        server.pid,
                        args.frames,
                        bytes.fromhex(args.unit),
                        ping_timeout=args.limit,
                        limit=args.limit,
                    )
                )
            finally:
                server.stop()
            row = {
                "server": name,
                "frames": args.frames,
                "rss_growth_mb": round(r.rss_growth / 1e6, 1),
                "worst_ping_ms": round(r.worst_ping * 1000, 1),
                "p99_ping_ms": round(r.ping_quantile(0.99) * 1000, 1),
                "pings": len(r.pings),
                "flooder": r.attacker,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| server | RSS growth | other socket's worst ping | p99 | pings | flooder |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        f = r["flooder"]
        print(
            f"| {r['server']} | {r['rss_growth_mb']} MB | {r['worst_ping_ms']} ms | "
            f"{r['p99_ping_ms']} ms | {r['pings']} | {f.get('frames_sent')} frames sent, "
            f"close code {f.get('close_code')} after {f.get('total_s')} s |"
        )

