"""The benchmarks' library: servers (servers.py); clients (subscribers.py with
subscriber_proc.py: the picows subscriber; loadgen.py: the compiled generator; publisher.py:
signed REST triggers); figures (stats.py, procs.py); the wire format they share (wire.py);
the C programs' build (native.py). Scenarios live in bench/scenarios/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
