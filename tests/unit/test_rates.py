"""The dashboard's rate history: per-interval rates from cumulative counters, the interval in
progress included, low rates kept as fractions, old points dropped."""

from __future__ import annotations

from pushwire.rates import RateHistory


def test_rates_from_counters_with_the_interval_in_progress():
    now = [1000.0]
    counts = [0, 0]
    h = RateHistory(lambda: (counts[0], counts[1]), clock=lambda: now[0], step=5, span=300)
    h.sample()
    counts[:] = [1, 3]  # one message in, three out in the first 5 s
    now[0] += 5
    h.sample()
    counts[:] = [2, 3]
    now[0] += 2  # 2 s into the next interval
    s = h.series()
    assert s["t_ms"] == [1_005_000, 1_007_000] and s["now_ms"] == 1_007_000
    assert s["in"] == [0.2, 0.5] and s["out"] == [0.6, 0.0]
    assert s["step"] == 5 and s["span"] == 300


def test_only_the_last_span_is_kept_and_a_fresh_sample_adds_nothing():
    now = [0.0]
    h = RateHistory(lambda: (int(now[0]), 0), clock=lambda: now[0], step=5, span=20)
    for _ in range(10):
        h.sample()
        now[0] += 5
    now[0] -= 5  # series() right after a sample: no interval in progress yet
    s = h.series()
    assert len(s["t_ms"]) == 4 and s["t_ms"][-1] == 45_000
    assert s["in"] == [1.0] * 4
    assert RateHistory(lambda: (0, 0), clock=lambda: 0.0).series()["t_ms"] == []
