"""The bus inbox without a server: a publish that arrives twice is delivered once."""

from __future__ import annotations

from pushwire.cluster.base import BusKind, BusMessage, encode
from pushwire.cluster.redis.pubsub import Inbox, Recent


def _inbox() -> tuple[Inbox, list[BusMessage]]:
    inbox = Inbox("me")
    got: list[BusMessage] = []
    inbox.deliver = got.append
    return inbox, got


def test_a_publish_sent_twice_is_delivered_once() -> None:
    """The publisher's retry on a fresh connection may send a pipeline that went out
    already: the same ids again. Other publishes, equal in content but not in id, and the
    same id from another node, are delivered."""
    inbox, got = _inbox()
    msg = BusMessage(BusKind.CHANNEL, app="a", channel="c", payload=b'{"x":1}')
    first = [encode(msg, "n1", f"t:{i}") for i in range(5)]
    for wire in first + first:  # the pipeline, then its retry
        inbox.receive("c:a:c", wire)
    inbox.receive("c:a:c", encode(msg, "n1", "t:5"))
    inbox.receive("c:a:c", encode(msg, "n2", "t:0"))  # another node's id space
    inbox.receive("c:a:c", encode(msg, "n1"))  # no id (an older sender): never dropped
    inbox.receive("c:a:c", encode(msg, "n1"))
    assert [(m.origin, m.ident) for m in got] == [
        *(("n1", f"t:{i}") for i in range(6)),
        ("n2", "t:0"),
        ("n1", ""),
        ("n1", ""),
    ]
    assert inbox.duplicates == 5


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recent_keeps_ids_for_its_time_whatever_the_rate() -> None:
    """At 20,000 publishes a second, an id is still known 9 s later (a retry comes at
    most a reply timeout and a reconnect after its first attempt)."""
    clock = _Clock()
    recent = Recent(keep=10.0, most=1_000_000, least=10, clock=clock)
    assert recent.seen("n", "first") is False
    for i in range(180_000):  # 9 s at 20,000/s
        clock.now += 1 / 20_000
        recent.seen("n", f"t:{i}")
    assert recent.seen("n", "first") is True


def test_recent_forgets_what_is_older_than_its_time_beyond_the_least() -> None:
    clock = _Clock()
    recent = Recent(keep=10.0, most=1000, least=3, clock=clock)
    for i in "abcde":
        recent.seen("n", i)
    clock.now += 11
    recent.seen("n", "f")  # a, b, c are older than 10 s: gone; the last 3 stay
    assert len(recent) == 3
    assert [recent.seen("n", i) for i in "def"] == [True, True, True]
    assert recent.seen("n", "a") is False


def test_recent_holds_at_most_its_bound() -> None:
    recent = Recent(keep=10.0, most=3, least=1, clock=_Clock())
    assert [recent.seen("n", i) for i in "abcab"] == [False, False, False, True, True]
    assert recent.seen("n", "d") is False  # evicts "a", however recent
    assert len(recent) == 3
    assert recent.seen("n", "a") is False
    assert recent.seen("n", "d") is True
