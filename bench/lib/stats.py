"""Figures from measurements: percentiles (of sorted samples or of the compiled generator's
histograms), ratios between runs, which side saturated, and the JSON lines the benchmarks
print."""

from __future__ import annotations

import collections
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.lib import ROOT

SATURATED = 0.9  # of one core: a single-threaded process at this share is the bottleneck


def emit(row: Mapping[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def percentile_ms(sorted_ns: Sequence[int], p: float, digits: int = 2) -> float | None:
    """The p-th percentile (nearest rank) of sorted nanosecond samples, in ms."""
    if not sorted_ns:
        return None
    k = min(len(sorted_ns) - 1, round(p / 100 * (len(sorted_ns) - 1)))
    return round(sorted_ns[k] / 1e6, digits)


def merge_hist(reports: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The compiled generator's latency histograms (µs bucket, count) summed over processes."""
    acc: collections.Counter[int] = collections.Counter()
    for r in reports:
        for us, n in r["lat"]["hist_us"]:
            acc[int(us)] += int(n)
    return sorted(acc.items())


def hist_pct(hist: Sequence[tuple[int, int]], p: float) -> float | None:
    """Percentile in ms of a merged histogram (bucket lower bound, ~0.2 % above 1 ms)."""
    total = sum(n for _, n in hist)
    if not total:
        return None
    rank = int(p / 100 * (total - 1)) + 1
    acc = 0
    for us, n in hist:
        acc += n
        if acc >= rank:
            return round(us / 1000, 2)
    return round(hist[-1][0] / 1000, 2)


def ratio(a: Any, b: Any) -> float | None:
    """a / b rounded to 2 places, or None where either is missing or b is 0."""
    try:
        return round(float(a) / float(b), 2)
    except (TypeError, ZeroDivisionError, ValueError):
        return None


def ratio_row(
    label: str, a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str], **extra: Any
) -> dict[str, Any]:
    """{"ratio": label, **extra, key: a[key] / b[key] ...}: the line every benchmark prints."""
    return {"ratio": label, **extra, **{k: ratio(a.get(k), b.get(k)) for k in keys}}


def saturation(cores: int, **loads: float) -> str:
    """The most loaded side, each against its capacity (one core for a single-threaded
    process; `machine` is the whole machine's busy cores, out of `cores`)."""
    if "machine" in loads:
        loads["machine"] /= cores
    side, load = max(loads.items(), key=lambda kv: kv[1])
    verdict = "saturated" if load >= SATURATED else "busiest, not saturated"
    return f"{side} {load:.0%} ({verdict})"


def git_commit(tree: Path = ROOT) -> str:
    """HEAD of the checkout the server runs from, and its uncommitted files in pushwire/."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pushwire"],
            cwd=tree,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "?"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
