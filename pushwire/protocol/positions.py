"""History positions: where an event sits in its channel's history (a Pushwire extension).

Sockets that opt in get `offset` and `epoch` on each event of a channel that keeps history,
and give the last position they saw back when they subscribe again, to recover what they
missed (README, "Channel history and recovery").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EPOCH_RE = re.compile(r"[0-9A-Za-z]{1,32}")
MAX_OFFSET = 2**53 - 1  # offsets travel as JSON numbers: exact in every client's doubles


@dataclass(frozen=True, slots=True)
class Position:
    """`offset` increases by one per event of the channel; `epoch` names the history: a new
    epoch means the old one was lost (the store was flushed or restarted empty, or the
    channel was idle past its retention)."""

    epoch: str
    offset: int
