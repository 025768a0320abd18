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
    "conn_memory",
    "engine_path",
    "fanout",
    "flood",
    "history",
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
