"""Backplane URLs (temporary minimal parser; replaced by the full one)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class TargetKind(enum.Enum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTarget:
    kind: TargetKind
    url: str = ""
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget(TargetKind.SINGLE, url=url)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        netloc = parts.netloc
        user, password = None, None
        if "@" in netloc:
            cred, netloc = netloc.rsplit("@", 1)
            u, _, pw = cred.partition(":")
            user, password = unquote(u) or None, unquote(pw) or None
        hosts = []
        for h in netloc.split(","):
            host, _, port = h.rpartition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a redis+sentinel:// URL names the master: .../MASTER[/DB]")
        db = int(path[1]) if len(path) > 1 else 0
        return RedisTarget(
            TargetKind.SENTINEL,
            url=url,
            hosts=tuple(hosts),
            master=path[0],
            db=db,
            username=user,
            password=password,
            tls=scheme.startswith("rediss"),
        )
    raise ValueError(f"not a redis://, rediss://, unix:// or redis+sentinel:// URL: {url!r}")
