"""The dashboard's rate chart in headless Chromium with live traffic at a low rate (the old
sparkline drew nothing there): labelled axes, in and out, the last five minutes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess

import pytest

from tests.conftest import TIMEOUT, running_server
from tests.helpers.chromium import BROWSER_DIR, keep_screenshot, node_modules, require_chromium

pytestmark = [pytest.mark.slow, pytest.mark.node, pytest.mark.browser]

require_chromium()


def test_rate_chart_shows_low_rate_traffic_in_and_out(tmp_path):
    shot = tmp_path / "dashboard-chart.png"
    # refreshing docs/: a longer run, so the picture shows a few minutes of traffic
    seconds = 150 if os.environ.get("PUSHWIRE_SCREENSHOTS") else 12
    with running_server(tmp_path, "[server]\nport = 0\n") as srv:
        node_modules()
        r = subprocess.run(
            [
                "node",
                str(BROWSER_DIR / "chart.js"),
                srv.http,
                "app-secret",
                str(shot),
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 6 + seconds,
            cwd=BROWSER_DIR,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    drawn = json.loads(r.stdout.strip().splitlines()[-1])
    assert drawn["got"] >= 5  # the triggered events reached the subscriber page
    for label in ("messages / s", "time (minutes ago)", "-5 min", "-1 min", "now"):
        assert label in drawn["texts"], (label, drawn["texts"])
    assert drawn["lines"] == ["in", "out"]
    for series in ("in", "out"):  # at least 3 points, and the rate is drawn above zero
        assert len(drawn[series]) >= 3, drawn
        assert min(drawn[series]) < drawn["baseline"] - 10, drawn
    # about one message a second: the scale follows the traffic (not a flat line at 0)
    assert 0 < drawn["max"] <= 10, drawn  # (the burst: about 3 a second)
    assert drawn["rateIn"] > 0 and drawn["rateOut"] > 0, drawn
    assert all("/s at " in t for t in drawn["tips"])
    gaps = [b - a for a, b in itertools.pairwise(drawn["t_ms"])]
    assert max(gaps[:-1]) < 5000 * 1.5, gaps  # a point every 5 s (the last: in progress)
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot, "dashboard-chart.png")
