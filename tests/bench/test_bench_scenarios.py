"""The benchmarks cannot rot silently: every scenario imports and describes itself, the wire
format the subscribers read is the one the publisher writes, and the two quickest scenarios
run end to end against a real Pushwire (picows subscribers with back-to-back triggers; the
compiled generator with paced triggers)."""

from __future__ import annotations

import importlib
import json
import shutil
from typing import Any

import orjson
import pytest

from bench.__main__ import main as bench_main
from bench.lib import ROOT
from bench.lib.servers import free_port
from bench.lib.wire import EVENT, EVENT_PREFIX, event_body, parse_event
from bench.scenarios import names
from bench.scenarios.engine_path import PATHS

pytestmark = pytest.mark.slow

SCENARIOS = {
    "apps_store",
    "backplane",
    "conn_memory",
    "engine_path",
    "fanout",
    "flood",
    "history",
    "redis_shards",
    "redis_wait",
    "rest_clients",
    "rest_ingest",
    "scale",
    "soak",
    "transports",
    "workers",
}


def rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_every_scenario_is_a_module_with_main_and_a_summary() -> None:
    assert set(names()) == SCENARIOS
    for name in names():
        module = importlib.import_module(f"bench.scenarios.{name}")
        assert callable(module.main), name
        assert module.__doc__ and module.__doc__.strip(), name


def test_help_lists_every_scenario_and_an_unknown_one_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"\n  {name} " in listed, name
    assert bench_main(["no-such-scenario"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        bench_main(["fanout", "--help"])
    assert exit_.value.code == 0
    assert "python -m bench fanout" in capsys.readouterr().out


def test_subscribers_read_the_sequence_and_time_the_publisher_writes() -> None:
    body = orjson.loads(event_body(1234, 987654321012, 100, "bench-7"))
    # the frame a server sends for it (Pusher V1: event, channel, data as a string)
    frame = orjson.dumps({"event": body["name"], "channel": body["channel"], "data": body["data"]})
    assert body["name"] == EVENT
    assert frame.startswith(EVENT_PREFIX)
    assert parse_event(frame) == (1234, 987654321012)
    assert 90 <= len(body["data"]) <= 110  # about the size asked for


def test_fanout_quick_delivers_every_event_to_every_subscriber(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench_main(["fanout", "--quick", "--port", str(free_port())])
    (row,) = rows(capsys.readouterr().out)
    assert row["server"] == "pushwire"
    assert row["delivered"] == row["expected"] == 100 * 20
    assert isinstance(row["server_us_per_msg"], float) and row["server_us_per_msg"] > 0
    assert isinstance(row["p99_ms"], float) and row["p99_ms"] > 0


def test_engine_path_quick_times_each_path_of_both_trees(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench_main(["engine_path", "--quick", "--baseline-tree", str(ROOT)])  # against itself
    *runs, ratios = rows(capsys.readouterr().out)
    assert sorted(r["server"] for r in runs) == ["base", "pushwire"]
    for r in runs:
        assert all(isinstance(r[k], float) and r[k] > 0 for k in PATHS), r
    assert ratios["ratio"] == "pushwire/base" and all(ratios[k] > 0 for k in PATHS)


@pytest.mark.skipif(not shutil.which("gcc"), reason="the compiled generator needs gcc")
def test_paced_fanout_with_the_compiled_generator_loses_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = str(free_port())
    argv = ["scale", "--rates", "--quick", "--servers", "pushwire", "--port", port]
    bench_main([*argv, "--duration", "1", "--procs", "2", "--settle", "0"])
    runs = [r for r in rows(capsys.readouterr().out) if "rate" in r and "ratio" not in r]
    assert [r["rate"] for r in runs] == [25, 50]
    for r in runs:
        assert r["lost"] == 0 and r["delivered"] == r["expected"] == 200 * r["events"], r
        assert r["triggers_ok"] == r["events"], r


def test_backplane_quick_measures_the_nodes_and_each_redis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["backplane", "--quick", "--topologies", "one,split", "--failovers", "0"]
    bench_main([*argv, "--subscribers", "20"])
    out = rows(capsys.readouterr().out)
    runs = {(r["topology"], r["phase"]): r for r in out if "phase" in r and "ratio" not in r}
    assert set(runs) == {(t, p) for t in ("one", "split") for p in ("triggers", "fanout")}
    for (topology, _), r in runs.items():
        roles = {"one": {"redis"}, "split": {"bus", "state"}}[topology]
        assert set(r["redis_us_per_event"]) == roles, r
    for t in ("one", "split"):
        trig, fan = runs[(t, "triggers")], runs[(t, "fanout")]
        assert trig["errors"] == 0 and trig["requests"] > 0, trig
        assert trig["redis_us_per_event"]["redis" if t == "one" else "bus"] > 0, trig
        assert fan["delivered"] == fan["expected"] == 20 * fan["events"], fan
    (ratio_row,) = [r for r in out if r.get("ratio") == "split/one" and r["phase"] == "fanout"]
    assert isinstance(ratio_row["server_us_per_msg"], float)


def test_failover_time_counts_from_the_kill_to_the_first_2xx_after_it() -> None:
    """Redis stopped for 1.5 s under paced triggers: the recovery is at least that long, and
    what was refused meanwhile is counted; nothing answered 2xx is lost."""
    import threading
    import time

    from bench.lib.backplanes import Topology, sections, start
    from bench.lib.failover import failover_run, wait_accepting
    from bench.lib.servers import start_pushwire
    from bench.lib.subscribers import Spec, Subscribers
    from bench.lib.wire import ws_url

    bp = start(Topology.ONE)
    node = start_pushwire(free_port(), sections=sections(bp))
    redis = bp.singles["redis"]
    try:
        with Subscribers(Spec((ws_url(node.url),)), 1) as subs:
            subs.open(1)
            wait_accepting(node)

            def outage() -> None:
                redis.stop()
                threading.Timer(1.5, redis.start).start()

            row = failover_run(node, outage, rate=50, before=1, window=6, subs=subs)
            time.sleep(0.1)
    finally:
        node.stop()
        bp.stop()
    assert row["recovery_s"] is not None and 1.5 <= row["recovery_s"] < 6, row
    assert row["refused"] > 0 and row["lost_2xx"] == 0, row
    assert row["statuses"]["200"] + row["refused"] == row["events"], row
