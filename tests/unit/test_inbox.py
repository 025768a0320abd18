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


def test_recent_forgets_beyond_its_size() -> None:
    recent = Recent(size=3)
    assert [recent.seen("n", i) for i in "abcab"] == [False, False, False, True, True]
    assert recent.seen("n", "d") is False  # evicts "a"
    assert recent.seen("n", "a") is False
    assert recent.seen("n", "d") is True
