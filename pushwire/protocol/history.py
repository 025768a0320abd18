"""Channel history policy: how a channel keeps its recent events (a Pushwire extension).

An app that keeps history names, per channel, how many events are kept and for how long;
the broker keeps them (README, "Channel history and recovery")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How a channel keeps history: its last `size` events, each for `ttl` seconds. The
    channel's epoch and top offset are kept for `meta_ttl` seconds after its last event, so a
    client that missed nothing recovers even after its events expired."""

    size: int
    ttl: float
    meta_ttl: float = 86_400.0

    @property
    def kept_for(self) -> float:
        """Seconds a history's epoch and top offset outlive its last event (never less than
        its events)."""
        return max(self.meta_ttl, self.ttl)
