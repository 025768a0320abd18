"""Outbound messages encoded once: a JSON payload and its WebSocket text frame, built lazily.

A broadcast creates one `Outbound` and hands the same object to every subscriber, so the JSON
and the frame header are computed once however many sockets receive it (server frames are not
masked, so the bytes are identical for every recipient). Connections never negotiate
permessage-deflate, so the shared frame is valid on all of them.
"""

from __future__ import annotations

from typing import Any

import orjson

from .websocket import text_frame

# orjson parses JSON nested up to 1024 levels but encodes only 255: a message we accept must
# be one we can send on. Nesting that deep needs at least two bytes per level, so only
# messages this long can fail, and only they pay for the check.
_DEEP = 2 * 255


def loads_checked(raw: str | bytes) -> Any:
    """Parse JSON that can be encoded again; raises ValueError (orjson's decode error, or
    for input nested deeper than orjson encodes)."""
    value = orjson.loads(raw)
    if len(raw) >= _DEEP:
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            raise ValueError("JSON nested too deeply (more than 255 levels)") from None
    return value


def json_depth(value: Any, limit: int) -> int:
    """How deeply `value` nests lists and objects, counting up to `limit + 1` at most."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
    return depth - 1 if not level else depth


class Outbound:
    """One server-to-client message. `payload` is the JSON; `wire` the frame, made once."""

    __slots__ = ("_wire", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        w = self._wire
        if w is None:
            w = self._wire = text_frame(self.payload)
        return w

    def json(self) -> Any:
        return orjson.loads(self.payload)

    def __repr__(self) -> str:
        return f"Outbound({self.payload.decode()!r})"
