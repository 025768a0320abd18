"""What the benchmarks' clients and servers agree on: the app's credentials, URLs, channel
names, and the bench event's payload (written by the publisher, read by the subscribers and
by the compiled generator in bench/loadgen, which expects this exact layout)."""

from __future__ import annotations

import orjson

from pushwire.protocol.signing import sign_rest

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
EVENT = "bench"  # the event name of every benchmark event
EVENT_PREFIX = b'{"event":"bench"'  # a received frame of it starts so (Pusher V1 frames)


def ws_url(host_port: str, client: str = "bench") -> str:
    """The WebSocket URL of the app on `host_port` ("127.0.0.1:6001" or "http://...")."""
    host_port = host_port.split("//", 1)[-1].rstrip("/")
    return f"ws://{host_port}{ws_path(client)}"


def ws_path(client: str = "bench") -> str:
    return f"/app/{KEY}?protocol=7&client={client}&version=1.0"


def channel_name(c: int, channels: int) -> str:
    """Channel `c` of `channels` (one channel: "bench", the compiled generator's)."""
    return EVENT if channels == 1 else f"{EVENT}-{c}"


def event_data(s: int, t_ns: int, size: int) -> str:
    """The data of event number `s`, sent (or scheduled) at CLOCK_MONOTONIC `t_ns`, padded to
    about `size` bytes. Key order matters: `parse_event` and loadgen.c read s and t by place."""
    return orjson.dumps({"s": s, "t": t_ns, "p": "x" * max(0, size - 40)}).decode()


def event_body(s: int, t_ns: int, size: int, channel: str) -> bytes:
    data = event_data(s, t_ns, size)
    return orjson.dumps({"name": EVENT, "channel": channel, "data": data})


SENT_KEY = b'\\"t\\":'  # what precedes t in a received frame; `Sock.receipt` reads it inline


def parse_event(raw: bytes) -> tuple[int, int]:
    """(s, t_ns) of a received bench event frame, without parsing its JSON (the data is the
    string `{"s":..,"t":..,..}` escaped inside the frame)."""
    i = raw.index(b'\\"s\\":') + 6
    j = raw.index(b",", i)
    k = j + 7  # past ,\"t\":
    return int(raw[i:j]), int(raw[k : raw.index(b",", k)])


def signed_query(method: str, path: str, body: bytes, timestamp: int | None = None) -> str:
    """The query string (auth_* and body_md5) of a REST request signed with the app's secret."""
    query = sign_rest(KEY, SECRET, method, path, {}, body, timestamp=timestamp)
    return "&".join(f"{k}={v}" for k, v in query.items())
