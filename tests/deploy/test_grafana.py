"""deploy/grafana/pushwire.json: every metric its queries use is one a node exports on
/metrics, it charts what the issue lists, and it is a well-formed Grafana dashboard. Also
the resync counter it charts, counted for real after Redis lost its data."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from tests.conftest import ROOT, TIMEOUT, cluster_nodes, running_server, start_redis
from tests.helpers.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.redis]

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "pushwire.json").read_text())
METRIC = re.compile(r"\bpushwire_[a-z0-9_]+")


def queries() -> list[str]:
    out = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in DASHBOARD["templating"]["list"] if "definition" in v]
    return out


async def exported(base: str) -> set[str]:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


async def test_every_metric_the_dashboard_uses_is_exported(tmp_path):
    with running_server(tmp_path, "[server]\nport = 0\n") as srv:
        c = await Client.connect(srv.ws_url())  # the per-app gauges need an app in use
        await c.subscribe("grafana")
        names = await exported(srv.http)
        await c.close()
    used = {m for q in queries() for m in METRIC.findall(q)}
    assert used and used <= names, f"not exported: {sorted(used - names)}"
    # what the issue asks the dashboard to show
    for wanted in (
        "pushwire_connections",
        "pushwire_frames_in_total",
        "pushwire_frames_out_total",
        "pushwire_bus_publish_failures_total",
        "pushwire_webhook_queue_depth",
        "pushwire_webhooks",
        "pushwire_cluster_resyncs_total",
        "pushwire_rate_limited_total",
    ):
        assert wanted in used, wanted
    assert any('outcome="failed"' in q for q in queries())  # the retried webhooks


def test_dashboard_is_well_formed():
    assert DASHBOARD["uid"] == "pushwire" and DASHBOARD["schemaVersion"] >= 36
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "instance", "app"} <= variables
    for p in DASHBOARD["panels"]:
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys() and p["gridPos"]["x"] + p["gridPos"][
            "w"
        ] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
    for q in queries():
        for a, b in ("()", "{}", "[]"):
            assert q.count(a) == q.count(b), q
        for var in re.findall(r"\$(\w+)", q):
            assert var in variables or var.startswith("__"), (var, q)


async def test_resyncs_are_counted_when_redis_loses_its_data(tmp_path):
    redis = start_redis()
    try:
        with cluster_nodes(redis, tmp_path, "[server]\nport = 0\n", "resync", n=1) as nodes:
            base = f"http://127.0.0.1:{nodes[0][1]}"
            redis.restart()  # an empty Redis: the node is not registered any more
            deadline = time.monotonic() + 3 * TIMEOUT
            async with aiohttp.ClientSession() as s:
                while True:
                    async with s.get(base + "/metrics") as r:
                        text = await r.text()
                    if 'pushwire_cluster_resyncs_total{reason="lost"} 1' in text:
                        break
                    assert time.monotonic() < deadline, text[-2000:]
                    await asyncio.sleep(0.2)
    finally:
        redis.stop()
