"""The benchmarks' library: servers (servers.py), clients (subscribers.py: picows sockets;
loadgen.py: the compiled generator; publisher.py: signed REST triggers), figures (stats.py,
procs.py) and the wire format they share (wire.py). Scenarios live in bench/scenarios/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
