"""Handshakes/s and REST triggers/s with the apps in the TOML file against apps in PostgreSQL.

The server must never ask the store per request, so the two must be within noise. Starts a
throwaway PostgreSQL (as the tests do), then alternates a node with each store `--rounds`
times; each round measures connect + subscribe of `--handshakes` clients (the compiled
generator) and `--triggers` REST triggers back-to-back over 32 connections; reports the
medians and their ratio (postgres / toml).

    python -m bench apps_store [--handshakes 3000] [--triggers 5000] [--rounds 3]
    python -m bench apps_store --quick       # a small run to check the tools
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from typing import Any

from bench.lib import ROOT
from bench.lib.loadgen import handshakes
from bench.lib.publisher import publish
from bench.lib.servers import free_port, pushwire_config, start_pushwire, write_temp
from bench.lib.stats import emit, ratio_row
from bench.lib.wire import APP_ID, KEY, SECRET
from bench.scenarios import parse, parser

FIGURES = ("handshakes_per_s", "triggers_per_s")


def create_app(store: dict[str, Any]) -> None:
    """The bench app in a fresh apps table."""
    config = write_temp(pushwire_config(0, sections={"apps_store": store}), "pw-apps-", ".toml")
    run = [sys.executable, "-m", "pushwire", "apps"]
    subprocess.run([*run, "migrate", "--config", config], check=True, cwd=ROOT)
    subprocess.run(
        [*run, "create", "--id", APP_ID, "--set", f"key={KEY}", "--set", f"secret={SECRET}",
         "--config", config],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip


def one_round(sections: dict[str, Any], args: Any) -> dict[str, float]:
    srv = start_pushwire(free_port(), sections=sections)
    try:
        row, gen = handshakes(srv, args.handshakes, 2)
        gen.close()
        res = publish(srv.port, args.triggers, 0, conns=32)
        if res.failed:
            raise RuntimeError(f"triggers failed: {res.statuses} {res.error_samples}")
    finally:
        srv.stop()
    return {"handshakes_per_s": row["handshakes_per_s"], "triggers_per_s": res.ok / res.duration_s}


def main(argv: list[str] | None = None) -> None:
    from tests.pg import start_postgres  # the tests' throwaway PostgreSQL

    ap = parser(__name__, __doc__)
    ap.add_argument("--handshakes", type=int, default=3000)
    ap.add_argument("--triggers", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = parse(ap, argv, quick={"handshakes": 200, "triggers": 300, "rounds": 1})
    pg = start_postgres()
    try:
        store = {"kind": "postgres", "dsn": pg.dsn}
        create_app(store)
        results: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.rounds):
            for name, sections in (("toml", {}), ("postgres", {"apps_store": store})):
                lists = results.setdefault(name, {k: [] for k in FIGURES})
                for k, v in one_round(sections, args).items():
                    lists[k].append(v)
    finally:
        pg.close()
    med = {n: {k: round(statistics.median(v)) for k, v in r.items()} for n, r in results.items()}
    for name, r in med.items():
        emit({"store": name, **r})
    emit(ratio_row("postgres/toml", med["postgres"], med["toml"], FIGURES))
