"""Engine hot paths in process: CPU per call of publish, a REST trigger and a bus delivery.

No sockets: one node on the memory backend with `--subscribers` connections that only count
what they are sent, so the figure is the engine's and the hub's own work (the loop over the
subscribers included), not the transport's. Each tree runs in a child process of its own
(this checkout, and with --baseline-tree another checkout's `pushwire/` package), rounds
alternating, the best of 5 timings per path and round; prints one JSON line per (tree, round)
and the ratios of the medians, this checkout / baseline.

    .venv/bin/python -m bench engine_path --baseline-tree /tmp/before   # git archive C | tar -x
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.lib import ROOT
from bench.lib.stats import emit, ratio_row
from bench.scenarios import parse, parser

PATHS = ("publish_us", "rest_trigger_us", "bus_delivery_us")

CHILD = r"""
import asyncio, json, os, time
from pushwire import api
from pushwire.cluster.base import BusKind, BusMessage
from pushwire.config import Config
from pushwire.connection import Connection
from pushwire.protocol.frames import Outbound
from pushwire.testing import make_node
try:
    from pushwire.apps.model import App
except ImportError:  # a tree from before the app model had its module
    from pushwire.config import App

APP = App(id="a", key="k", secret="s")
N, CALLS = int(os.environ["SUBS"]), int(os.environ["CALLS"])

class Counting(Connection):
    __slots__ = ("n",)
    def __init__(self, i):
        super().__init__(APP, f"1.{i}", 0.0)
        self.n = 0
    def send(self, msg):
        self.n += 1
    def close(self, code, reason):
        self.closed = True

async def main():
    engine = make_node(Config(apps=(APP,))).engine
    await engine.start()
    for i in range(N):
        conn = Counting(i)
        await engine.connect(conn)
        await engine.subscribe(conn, "room", None)
    msg = Outbound(b'{"event":"e","channel":"room","data":"x"}')
    bm = BusMessage(BusKind.CHANNEL, "a", "room", payload=msg.payload)
    on_bus = engine.bus.on_bus if hasattr(engine, "bus") else engine._on_bus
    body = {"name": "e", "channel": "nobody", "data": "x" * 100}
    async def publish():
        await engine.publish(APP, "room", msg, None)
    async def rest_trigger():
        await api.trigger(engine, APP, body)
    async def bus_delivery():
        on_bus(bm)
    out = {}
    for name, fn, n in (("publish_us", publish, CALLS), ("rest_trigger_us", rest_trigger,
                        CALLS * 10), ("bus_delivery_us", bus_delivery, CALLS)):
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            for _ in range(n):
                await fn()
            best = min(best, (time.process_time() - t) / n * 1e6)
        out[name] = round(best, 2)
    print(json.dumps(out))
    await engine.stop()

asyncio.run(main())
"""


def run_child(tree: str, subscribers: int, calls: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=tree, SUBS=str(subscribers), CALLS=str(calls))
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd="/", env=env, capture_output=True, text=True, check=True
    )
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=2000, help="per timing (REST triggers: 10x)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-tree", help="another checkout, measured as 'base'")
    args = parse(ap, argv, {"subscribers": 100, "calls": 200, "rounds": 1})
    trees = [("pushwire", str(ROOT))]
    if args.baseline_tree:
        trees.append(("base", os.path.abspath(args.baseline_tree)))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, tree in trees if r % 2 == 0 else trees[::-1]:
            row = {"server": name, "round": r + 1, "subscribers": args.subscribers}
            row.update(run_child(tree, args.subscribers, args.calls))
            rows[name].append(row)
            emit(row)
    if args.baseline_tree:
        med = {n: {k: statistics.median(x[k] for x in rs) for k in PATHS} for n, rs in rows.items()}
        emit(ratio_row("pushwire/base", med["pushwire"], med["base"], PATHS, of="medians"))
