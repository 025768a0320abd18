"""The backplane's Redis URLs (pushwire/cluster/redis/urls.py): what each form means, a clear
ValueError for each mistake (never showing the password), and fuzzing: any text parses or
raises ValueError, and every target survives to_url() -> parse unchanged."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import parse_url

from pushwire.cluster.redis.urls import RedisKind, RedisTarget, parse_redis_url

SINGLE, SENTINEL, CLUSTER = RedisKind.SINGLE, RedisKind.SENTINEL, RedisKind.CLUSTER

GOOD = [
    ("redis://127.0.0.1:6379/0", RedisTarget(SINGLE, hosts=(("127.0.0.1", 6379),))),
    ("redis://localhost", RedisTarget(SINGLE, hosts=(("localhost", 6379),))),
    ("REDIS://h:7000/3", RedisTarget(SINGLE, hosts=(("h", 7000),), db=3)),
    ("redis://h/?db=2", RedisTarget(SINGLE, hosts=(("h", 6379),), db=2)),
    ("redis://h/2?db=2&socket_timeout=1", RedisTarget(SINGLE, hosts=(("h", 6379),), db=2)),
    (
        "rediss://:s%40cr%2Fet@redis.example.com:6380/1",
        RedisTarget(SINGLE, True, (("redis.example.com", 6380),), db=1, password="s@cr/et"),
    ),
    ("redis://user@h", RedisTarget(SINGLE, hosts=(("h", 6379),), username="user")),
    (
        "redis://user:pw@[::1]:6390",
        RedisTarget(SINGLE, hosts=(("::1", 6390),), username="user", password="pw"),
    ),
    ("redis://[fe80::1]", RedisTarget(SINGLE, hosts=(("fe80::1", 6379),))),
    ("unix:///run/redis.sock", RedisTarget(SINGLE, path="/run/redis.sock")),
    (
        "unix://:pw@/run/redis%20x.sock?db=4",
        RedisTarget(SINGLE, path="/run/redis x.sock", db=4, password="pw"),
    ),
    (
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/pw",
        RedisTarget(
            SENTINEL,
            hosts=(("127.0.0.1", 26379), ("127.0.0.1", 26380), ("127.0.0.1", 26381)),
            master="pw",
        ),
    ),
    (
        "redis+sentinel://:secret@s1,s2:5000,[::1]/my-master/2",
        RedisTarget(
            SENTINEL,
            hosts=(("s1", 26379), ("s2", 5000), ("::1", 26379)),
            master="my-master",
            db=2,
            password="secret",
        ),
    ),
    ("redis+sentinel://s1/pw/", RedisTarget(SENTINEL, hosts=(("s1", 26379),), master="pw")),
    ("rediss+sentinel://s1/pw", RedisTarget(SENTINEL, True, (("s1", 26379),), master="pw")),
    (
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[2001:db8::7]",
        RedisTarget(CLUSTER, hosts=(("10.0.0.1", 7000), ("10.0.0.2", 7001), ("2001:db8::7", 6379))),
    ),
    ("redis+cluster://n1/", RedisTarget(CLUSTER, hosts=(("n1", 6379),))),
    (
        "rediss+cluster://default:pw@n1:7000",
        RedisTarget(CLUSTER, True, (("n1", 7000),), username="default", password="pw"),
    ),
]


@pytest.mark.parametrize(("url", "want"), GOOD, ids=[u for u, _ in GOOD])
def test_each_form_means_what_the_docstring_says(url: str, want: RedisTarget) -> None:
    got = parse_redis_url(url)
    assert got == want
    assert got.url == url  # the URL as given, for redis-py's from_url
    assert parse_redis_url(got.to_url()) == got


@pytest.mark.parametrize(
    "url",
    [u for u, t in GOOD if t.kind is SINGLE and not t.unix and not u.startswith("REDIS")],
)
def test_a_single_server_url_means_to_us_what_it_means_to_redis_py(url: str) -> None:
    target, theirs = parse_redis_url(url), parse_url(url)
    assert target.hosts == ((theirs["host"], theirs.get("port", 6379)),)
    assert (target.db, target.username, target.password) == (
        theirs.get("db", 0),
        theirs.get("username"),
        theirs.get("password"),
    )


BAD = [
    ("127.0.0.1:6379", "no scheme"),
    ("http://h", "unknown scheme 'http'"),
    ("redis+memcache://h", "unknown scheme"),
    ("redis://", "no host"),
    ("redis://h x", "spaces or control characters"),
    ("redis://h\n", "spaces or control characters"),
    ("redis://a,b", "takes one host; for several use redis\\+sentinel:// or redis\\+cluster://"),
    ("redis://h/1/2", "at most /DB"),
    ("redis://h/x", "database 'x' is not a number"),
    ("redis://h/-1", "database '-1' is not a number"),
    ("redis://h/1?db=2", "database 1 in the path but db=2 in the query"),
    ("redis://h?db=1&db=1", "'db' given twice"),
    ("redis://h#frag", "fragment"),
    ("redis://h:0", "port '0' of h is not a number from 1 to 65535"),
    ("redis://h:65536", "port '65536'"),
    ("redis://h:", "port ''"),
    ("redis://h:\uff16\uff13\uff17\uff19", "port"),
    ("redis://h:²", "port"),
    ("redis://::1:6379", "an IPv6 address goes in brackets"),
    ("redis://[::1", "unclosed '\\['"),
    ("redis://[::1]6379", "expected ':PORT' after \\[::1\\]"),
    ("redis://[nothex]:1", "'nothex' in brackets is not an IPv6 address"),
    ("redis://-bad", "'-bad' is not a host name"),
    ("redis://h%20/0", "is not a host name"),
    ("redis://:@h", "empty credentials"),
    ("unix://", "no socket path"),
    ("unix://host/sock", "takes a path, not a host"),
    ("unix:///s?db=x", "database 'x'"),
    ("redis+sentinel://s1", "no master name"),
    ("redis+sentinel://s1/", "no master name"),
    ("redis+sentinel://s1/m/1/2", "expected /MASTER\\[/DB\\]"),
    ("redis+sentinel://s1/m/x", "database 'x'"),
    ("redis+sentinel://s1/m%20x", "master name must be non-empty, without spaces"),
    ("redis+sentinel://s1,,s2/m", "empty host"),
    ("redis+sentinel://s1,s1:26379/m", "listed twice"),
    ("redis+sentinel://s1/m?x=1", "query parameters are not supported"),
    ("redis+cluster://n1/0", "takes no database or path"),
    ("redis+cluster://n1/x/y", "takes no database or path"),
    ("redis+cluster://n1?x=1", "query parameters are not supported"),
    ("redis+cluster://n1,", "empty host"),
    ("rediss+cluster://n1:99999", "port '99999'"),
]


@pytest.mark.parametrize(("url", "message"), BAD, ids=[u for u, _ in BAD])
def test_each_mistake_gets_a_clear_value_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_redis_url(url)
    assert str(raised.value).startswith("Redis URL ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@h:0",
        "redis://user:hunter2@h/x",
        "redis+sentinel://:hunter2@s1",
        "redis+cluster://u:hunter2@n1/0",
        "unix://:hunter2@host/sock",
        "redis://:hunter2@a,b",
        "http://:hunter2@h",
    ],
)
def test_an_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    assert "hunter2" not in str(raised.value)
    assert "***" in str(raised.value)


def test_repr_and_redacted_hide_the_password() -> None:
    target = parse_redis_url("redis+sentinel://admin:hunter2@s1:26379,s2:26380/pw/1")
    assert "hunter2" not in repr(target)
    assert target.redacted() == "redis+sentinel://admin:***@s1:26379,s2:26380/pw/1"
    assert parse_redis_url("redis://h").redacted() == "redis://h:6379/0"


# ---------------------------------------------------------------------------------- fuzzing
_name = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
_ipv6 = st.ip_addresses(v=6).map(str)
_host = st.tuples(st.one_of(_name, _ipv6), st.integers(1, 65535))
_secret = st.none() | st.text(min_size=1, max_size=12)
_user = st.none() | st.text(min_size=1, max_size=8)
# text a URL can carry (UTF-8): no lone surrogates
_visible = st.characters(min_codepoint=33, exclude_categories=("Cs",))
_master = st.text(
    st.characters(min_codepoint=33, exclude_characters="\x7f", exclude_categories=("Cs",)),
    min_size=1,
)


@st.composite
def _targets(draw: st.DrawFn) -> RedisTarget:
    kind = draw(st.sampled_from(RedisKind))
    unix = kind is SINGLE and draw(st.booleans())
    hosts = draw(st.lists(_host, min_size=1, max_size=1 if kind is SINGLE else 4, unique=True))
    password, username = draw(_secret), draw(_user)
    if unix:
        path = "/" + draw(st.text(_visible, min_size=1, max_size=20))
        return RedisTarget(
            kind, path=path, db=draw(st.integers(0, 15)), username=username, password=password
        )
    return RedisTarget(
        kind,
        tls=draw(st.booleans()),
        hosts=tuple(hosts),
        master=draw(_master) if kind is SENTINEL else "",
        db=0 if kind is CLUSTER else draw(st.integers(0, 15)),
        username=username,
        password=password,
    )


@given(_targets())
def test_every_target_survives_a_round_trip_through_its_url(target: RedisTarget) -> None:
    assert parse_redis_url(target.to_url()) == target


_URLISH = string.ascii_letters + string.digits + ":/@,[]?#=&%.-_+ \x00é"


@given(
    st.one_of(
        st.text(),
        st.text(alphabet=_URLISH),
        st.tuples(
            st.sampled_from(["redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "x"]),
            st.text(alphabet=_URLISH),
        ).map("://".join),
    )
)
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        target = parse_redis_url(text)
    except ValueError as exc:
        assert str(exc).startswith("Redis URL ")
        return
    assert parse_redis_url(target.to_url()) == target
