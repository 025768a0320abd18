"""Hypothesis strategies for fuzzing: JSON values (odd strings, extreme numbers, deep
nesting), channel names, and REST request bodies; the settings every fuzz property uses (bounded
and reproducible: `max_examples` per property, `derandomize`, no example database)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck
from hypothesis import strategies as st

KEY, SECRET = "fz-key", "fz-secret"


FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}

# --------------------------------------------------------------------------------------------
# Strategies: JSON values

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00\x01\x1f\x7f",
    "\t\r\n",
    "\u2028\u2029",
    "\ufeff",
    "\ufffe\uffff",
    "\U0010ffff",
    "\U0001f600\u200d\U0001f600",
    "e\u0301\u0301\u0301",
    "\u202e\u202d",
    "\\",
    '"',
    "\\u0000",
    '\\"',
    "{}",
    "null",
    "../../etc/passwd",
    "%00%2F",
    "<script>",
    "private-fz",
    "presence-fz",
    "#server-to-user-u1",
    "fz-key:",
]


class Huge(str):
    """A long string that shows itself short (in hypothesis' reports of failing examples)."""

    __slots__ = ()

    def __repr__(self) -> str:
        if self == self[:1] * len(self):
            return f"{self[:1]!r} * {len(self)}"
        return f"Huge({self[:60]!r} + ... {len(self)} characters)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def huge_strings() -> st.SearchStrategy[str]:
    """Strings around the limits (200 names, 10240 data, 262144 frames) and beyond."""
    return st.builds(
        lambda ch, n: Huge(ch * n),
        st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "[", '"', "\\"]),
        st.sampled_from([128, 129, 200, 201, 1024, 1025, 10240, 10241, 70_000, 270_000]),
    )


_SPECIAL_CHARS = (
    "\x80\x85\x9f\xa0\xad\xdf\xe9\xff\u0130\u0301\u0361\u0627\u05d0\u0661\u0e01\u1680"
    "\u180e\u200b\u200d\u200e\u202e\u2028\u2029\u2060\u212a\u3000\u4e2d\ufb01\ufdd0\ufeff"
    "\uff10\ufffd\ufffe\uffff\U0001d400\U0001f600\U000e0001\U0010ffff"
)
# 256 characters, one per byte: ASCII (controls included), odd ones above, and a spread of
# code points from the rest of the BMP and beyond (never a surrogate)
CHAR_TABLE = (
    [chr(i) for i in range(128)]
    + list(_SPECIAL_CHARS)
    + [chr(0x100 + (i * 7919) % 0xD700) for i in range(90 - len(_SPECIAL_CHARS) + 38)]
)
assert len(CHAR_TABLE) == 256


def _from_table(raw: bytes) -> str:
    return "".join(CHAR_TABLE[b] for b in raw)


# hypothesis' text() draws character by character (slow); bytes mapped through the table
# cost one draw. Both never contain surrogates.
small_text = st.one_of(
    st.binary(max_size=24).map(_from_table),
    st.binary(max_size=24).map(_from_table),
    st.binary(max_size=24).map(_from_table),
    st.text(max_size=8),
)
strings = st.one_of(small_text, small_text, st.sampled_from(ODD_STRINGS), huge_strings())
extreme_ints = st.sampled_from(
    [
        0,
        -1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**30,
        -(10**400),
    ]
)
extreme_floats = st.sampled_from([-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308])
numbers = st.one_of(
    st.integers(),
    extreme_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    extreme_floats,
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(small_text, st.sampled_from(ODD_STRINGS)), children, max_size=5),
    ),
    max_leaves=6,
)

# --------------------------------------------------------------------------------------------
# Strategies: channel names

VALID_CHANNELS = [
    "fz",
    "private-fz",
    "presence-fz",
    "private-encrypted-fz",
    "cache-fz",
    "private-cache-fz",
    "presence-cache-fz",
    "private-encrypted-cache-fz",
    "#server-to-user-u1",
    "#server-to-user-obs",
]
ODD_CHANNELS = [
    "private-",
    "presence-",
    "cache-",
    "private-encrypted-",
    "presence-cache-",
    "#server-to-user-",
    "#server-to-user-a b",
    "#fz",
    "a b",
    "fz\n",
    "\nfz",
    "fz\x00",
    "\u00fc",
    "a" * 200,
    "a" * 201,
    "private-" + "a" * 192,
    "private-" + "a" * 193,
    "presence-" + "p" * 300,
    "*",
    "private-fz,private-fz2",
    "PRIVATE-fz",
]
channel_names = st.one_of(
    st.sampled_from(VALID_CHANNELS),
    st.sampled_from(VALID_CHANNELS),
    st.sampled_from(ODD_CHANNELS),
    st.builds(  # valid characters (or empty) after any prefix
        str.__add__,
        st.sampled_from(
            ["", "private-", "presence-", "cache-", "private-encrypted-", "#server-to-user-"]
        ),
        st.text(alphabet="-aZ09_=@,.;", max_size=12),
    ),
    strings,
)
channel_values = st.one_of(channel_names, channel_names, channel_names, json_values)


def nested(depth: int, pattern: str, leaf: Any) -> Any:
    v = leaf
    for i in range(depth):
        if pattern == "list" or (pattern == "mixed" and i % 2):
            v = [v]
        elif pattern == "wide":
            v = [0, v, {"k": None}]
        else:
            v = {"k": v}
    return v


deep_values = st.builds(
    nested,
    st.integers(1, 400),
    st.sampled_from(["list", "dict", "mixed", "wide"]),
    st.sampled_from([None, 0, "x", {}, []]),
)


# --------------------------------------------------------------------------------------------
# REST bodies

socket_ids = st.one_of(
    st.sampled_from(["1.2", "123.456", "1.", ".2", "1.2.3", "a.b", "", "1.2\n", "\u0661.\u0662"]),
    json_values,
)
info_strings = st.sampled_from(
    [
        "",
        "user_count",
        "subscription_count",
        "user_count,subscription_count",
        "cache",
        "subscription_count,cache",
        " user_count , ",
        ",,",
        "members",
    ]
)
info_values = st.one_of(info_strings, info_strings, json_values)
event_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["ev", "", "e" * 200, "e" * 201]), json_values),
        "data": st.one_of(json_values, huge_strings(), deep_values),
        "channel": channel_values,
        "channels": st.one_of(
            st.lists(channel_names, max_size=4),
            st.lists(st.sampled_from(VALID_CHANNELS), min_size=1, max_size=4, unique=True),
            st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=100, max_size=102),
            json_values,
        ),
        "socket_id": socket_ids,
        "info": info_values,
    },
)
# well-formed events (some still refused: 413, too many channels, user_count on a channel
# that is not a presence channel...)
valid_event_bodies = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["ev", "my-event", "client-x", "pusher:x"]),
        "data": st.one_of(json_values.map(json.dumps), json_values, huge_strings()),
    },
    optional={"socket_id": st.sampled_from(["1.2", "123.456"]), "info": info_strings},
).flatmap(
    lambda body: st.one_of(
        st.sampled_from(VALID_CHANNELS).map(lambda c: {**body, "channel": c}),
        st.lists(st.sampled_from(VALID_CHANNELS), min_size=1, max_size=4, unique=True).map(
            lambda cs: {**body, "channels": cs}
        ),
    )
)
event_bodies = st.one_of(event_bodies, valid_event_bodies, valid_event_bodies)
batch_bodies = st.one_of(
    st.fixed_dictionaries(
        {"batch": st.one_of(st.lists(event_bodies, max_size=11), json_values)},
        optional={"x": json_values},
    ),
    json_values,
)
trigger_bodies = st.one_of(event_bodies, event_bodies, json_values)
query_dicts = st.dictionaries(
    st.one_of(st.sampled_from(["filter_by_prefix", "info", "x"]), small_text),
    st.one_of(
        st.sampled_from(["presence-", "private-", "", "user_count", "subscription_count,cache"]),
        info_strings,
        small_text,
    ),
    max_size=3,
)
rest_calls = st.one_of(
    st.tuples(st.just("trigger"), trigger_bodies),
    st.tuples(st.just("trigger_batch"), batch_bodies),
    st.tuples(st.just("channels"), query_dicts),
    st.tuples(st.just("channel"), channel_names, query_dicts),
    st.tuples(st.just("users"), channel_names),
    st.tuples(st.just("terminate"), st.one_of(st.sampled_from(["u1", "obs", ""]), strings)),
)
