"""The backplane's Redis URLs, parsed into a `RedisTarget` (no I/O, no redis import).

    redis://[[user]:password@]HOST[:PORT][/DB]          one server (rediss:// over TLS)
    unix://[[user]:password@]/PATH[?db=DB]              one server on a unix socket
    redis+sentinel://[[user]:password@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]
                                                        the primary named MASTER, found through
                                                        these sentinels (rediss+sentinel://:
                                                        TLS to the data nodes)
    redis+cluster://[[user]:password@]HOST[:PORT][,HOST[:PORT]...]
                                                        a Redis Cluster, from these seed nodes
                                                        (rediss+cluster:// over TLS)

A HOST is a name, an IPv4 address or an IPv6 address in brackets (`[::1]:6379`). The port is
26379 by default for a sentinel, 6379 otherwise. The user name and password are percent-
decoded; they are for the data nodes. A cluster has only database 0: its URL takes no path.
Query parameters pass through on redis:// and unix:// URLs (redis-py reads them; `db` among
them), and are refused on the others. Every mistake raises `ValueError` naming the part that is
wrong; the message never shows the password.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, quote, unquote

SENTINEL_PORT = 26379
REDIS_PORT = 6379


class RedisKind(enum.StrEnum):
    SINGLE = "single"  # one server: redis://, rediss://, unix://
    SENTINEL = "sentinel"  # a primary found through sentinels
    CLUSTER = "cluster"  # a Redis Cluster


# scheme -> (kind, tls)
SCHEMES: dict[str, tuple[RedisKind, bool]] = {
    "redis": (RedisKind.SINGLE, False),
    "rediss": (RedisKind.SINGLE, True),
    "unix": (RedisKind.SINGLE, False),
    "redis+sentinel": (RedisKind.SENTINEL, False),
    "rediss+sentinel": (RedisKind.SENTINEL, True),
    "redis+cluster": (RedisKind.CLUSTER, False),
    "rediss+cluster": (RedisKind.CLUSTER, True),
}

Host = tuple[str, int]
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_DB = re.compile(r"[0-9]{1,9}")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class RedisTarget:
    """Where a backplane role's Redis is. `hosts`: the server (SINGLE over TCP), the sentinels
    (SENTINEL) or the seed nodes (CLUSTER); empty for a unix socket (`path`). `url`: the URL
    as given (what redis-py's `from_url` takes for SINGLE)."""

    kind: RedisKind
    tls: bool = False
    hosts: tuple[Host, ...] = ()
    master: str = ""  # SENTINEL: the master's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""  # unix://: the socket's path
    url: str = field(default="", repr=False, compare=False)

    @property
    def unix(self) -> bool:
        return bool(self.path)

    def to_url(self) -> str:
        """This target as a URL, in its canonical form: default ports and database spelt
        out, a single server's other query parameters left out."""
        return self._url(None if self.password is None else quote(self.password, safe=""))

    def redacted(self) -> str:
        """The canonical URL with the password shown as *** (for logs and metrics)."""
        return self._url(None if self.password is None else "***")

    def _url(self, secret: str | None) -> str:
        user = quote(self.username or "", safe="")
        auth = f"{user}:{secret}@" if secret is not None else f"{user}@" if user else ""
        if self.unix:
            db = f"?db={self.db}" if self.db else ""
            return f"unix://{auth}{quote(self.path, safe='/')}{db}"
        scheme = next(s for s, kt in SCHEMES.items() if kt == (self.kind, self.tls))
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = ""
        if self.kind is RedisKind.SENTINEL:
            path = f"/{quote(self.master, safe='')}/{self.db}"
        elif self.kind is RedisKind.SINGLE:
            path = f"/{self.db}"
        return f"{scheme}://{auth}{hosts}{path}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse one backplane URL (the forms in this module's docstring); ValueError if it is
    not one of them."""
    where = f"Redis URL {_redact(url)!r}"
    if _BAD_CHARS.search(url):
        raise ValueError(f"{where}: must not contain spaces or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{where}: no scheme (expected one of {', '.join(SCHEMES)})")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    kind, tls = SCHEMES[scheme]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError(f"{where}: a URL fragment ('#...') means nothing here")
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _userinfo(userinfo, where) if at else (None, None)
    base = RedisTarget(kind, tls=tls, username=username, password=password, url=url)
    if scheme == "unix":
        if hostlist:
            raise ValueError(f"{where}: a unix:// URL takes a path, not a host ({hostlist!r})")
        if not path.strip("/"):
            raise ValueError(f"{where}: no socket path (unix:///path/to/redis.sock)")
        return replace(base, path=unquote(path), db=_query_db(query, None, where))
    if query and kind is not RedisKind.SINGLE:
        raise ValueError(f"{where}: query parameters are not supported in {scheme}:// URLs")
    if not hostlist:
        raise ValueError(f"{where}: no host")
    default_port = SENTINEL_PORT if kind is RedisKind.SENTINEL else REDIS_PORT
    hosts = tuple(_host(h, default_port, where) for h in hostlist.split(","))
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"{where}: a host is listed twice")
    segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    if kind is RedisKind.CLUSTER:
        if segments:
            raise ValueError(
                f"{where}: a {scheme}:// URL takes no database or path (Redis Cluster has "
                f"only database 0), got {path!r}"
            )
        return replace(base, hosts=hosts)
    if kind is RedisKind.SENTINEL:
        if not segments:
            raise ValueError(f"{where}: no master name ({scheme}://HOST:PORT,.../MASTER[/DB])")
        if len(segments) > 2:
            raise ValueError(f"{where}: expected /MASTER[/DB] after the hosts, got {path!r}")
        master = segments[0]
        if not master or _BAD_CHARS.search(master):
            raise ValueError(f"{where}: the master name must be non-empty, without spaces")
        db = _db(segments[1], where) if len(segments) == 2 else 0
        return replace(base, hosts=hosts, master=master, db=db)
    if len(hosts) > 1:
        raise ValueError(
            f"{where}: {scheme}:// takes one host; for several use redis+sentinel:// or "
            "redis+cluster://"
        )
    if len(segments) > 1:
        raise ValueError(f"{where}: expected at most /DB after the host, got {path!r}")
    path_db = _db(segments[0], where) if segments else None
    return replace(base, hosts=hosts, db=_query_db(query, path_db, where))


def _userinfo(userinfo: str, where: str) -> tuple[str | None, str | None]:
    user, colon, secret = userinfo.partition(":")
    username = unquote(user) or None
    password = unquote(secret) if colon else None
    if username is None and not password:
        raise ValueError(f"{where}: empty credentials before '@'")
    return username, password or None


def _host(text: str, default_port: int, where: str) -> Host:
    if not text:
        raise ValueError(f"{where}: empty host (hosts are separated by single commas)")
    port_text = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{where}: unclosed '[' in host {text!r}")
        host, after = text[1:end], text[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise ValueError(f"{where}: expected ':PORT' after [{host}], got {after!r}")
            port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{where}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port_part = text.partition(":")
        if ":" in port_part:
            raise ValueError(
                f"{where}: host {text!r}: an IPv6 address goes in brackets ([::1]:6379)"
            )
        if colon:
            port_text = port_part
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{where}: {host!r} is not a host name or IP address")
    if port_text is None:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: port {port_text!r} of {host} is not a number from 1 to 65535")
    return host, int(port_text)


def _db(text: str, where: str) -> int:
    if not _DB.fullmatch(text):
        raise ValueError(f"{where}: database {text!r} is not a number (0, 1, ...)")
    return int(text)


def _query_db(query: str, path_db: int | None, where: str) -> int:
    values = parse_qs(query, keep_blank_values=True).get("db", [])
    if len(values) > 1:
        raise ValueError(f"{where}: 'db' given twice in the query")
    if not values:
        return path_db or 0
    db = _db(values[0], where)
    if path_db is not None and path_db != db:
        raise ValueError(f"{where}: database {path_db} in the path but db={db} in the query")
    return db


def _redact(url: str) -> str:
    """`url` with whatever stands between the scheme's '://' and the last '@' before the path
    (the credentials) shown as '***'."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else "***"
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    cut = min(ends, default=len(rest))
    at = rest.rfind("@", 0, cut)
    return url if at < 0 else f"{scheme}://***@{rest[at + 1 :]}"
