"""The hub answers questions about this node through methods, and answering never changes
it: reading an app that has no state here creates none (an app seen only by REST calls or
bus messages leaves nothing behind)."""

from __future__ import annotations

from pushwire.apps.model import App
from pushwire.cluster.base import ChannelStats
from pushwire.hub import Hub, WatchStatus
from pushwire.protocol import messages
from pushwire.protocol.errors import ConnectionUnauthorized
from pushwire.testing import FakeConnection

APP = App(id="1", key="k", secret="s", enable_watchlist_events=True)
OTHER = App(id="2", key="k2", secret="s2")


def test_reading_an_app_creates_no_entry():
    hub = Hub()
    msg = messages.subscription_succeeded("news")
    stranger = FakeConnection(APP)
    stranger.channels["news"] = None
    assert hub.state(APP).channels == {}
    assert hub.channel(APP, "news") is None and not hub.has_channel(APP, "news")
    assert hub.broadcast(APP, "news", msg, None) == 0
    hub.member_event(APP, "presence-x", "u", 1, msg)
    hub.notify_watchers(APP, "u", WatchStatus.ONLINE)
    assert hub.send_to_user(APP, "u", msg) == 0
    assert hub.user_connections(APP, "u") == []
    assert hub.close_user(APP, "u", ConnectionUnauthorized("x")) == 0
    assert hub.connection_count(APP) == 0
    assert hub.local_stats(APP) == {} and hub.channel_stats(APP, "news") is None
    assert hub.subscriber_count(APP, "news") == 0 and hub.local_members(APP, "p") == {}
    assert not hub.has_member(APP, "presence-x", "u") and hub.signed_in(APP, ["u"]) == []
    assert hub.app_connections(APP.id) == []
    assert not hub.unsubscribe(stranger, "news")
    assert not hub.sign_out(stranger)
    hub.remove_connection(stranger)
    hub.replace_app(APP)
    assert hub.apps == {}
    assert hub.snapshot() == {}


def test_local_figures():
    hub = Hub()
    a, b, c = FakeConnection(APP), FakeConnection(APP), FakeConnection(APP)
    for conn in (a, b, c):
        hub.add_connection(conn)
    hub.begin_subscribe(a, "presence-room", "ann")
    hub.activate(a, "presence-room", [], 1, {"n": 1})
    hub.begin_subscribe(b, "presence-room", "bob")
    hub.activate(b, "presence-room", [], 2, {"n": 2})
    hub.begin_subscribe(c, "news", None)
    hub.activate(c, "news", [])
    hub.begin_subscribe(a, "news-joining", None)  # joining only: not counted, but here
    hub.sign_in(b, "bob", "{}")
    assert hub.local_stats(APP) == {
        "presence-room": ChannelStats(2, 2),
        "news": ChannelStats(1, None),
    }
    assert hub.local_stats(APP, "news") == {"news": ChannelStats(1, None)}
    assert hub.channel_stats(APP, "news-joining") is None and hub.has_channel(APP, "news-joining")
    assert hub.subscriber_count(APP, "presence-room") == 2
    assert hub.local_members(APP, "presence-room") == {"ann": {"n": 1}, "bob": {"n": 2}}
    assert hub.has_member(APP, "presence-room", "bob")
    assert not hub.has_member(APP, "presence-room", "carl")
    assert hub.signed_in(APP, ["carl", "bob"]) == ["bob"]
    assert hub.connection_count(APP) == 3 and hub.connection_count(OTHER) == 0
    assert set(hub.app_connections(APP.id)) == {a, b, c}
    changed = App(id="1", key="k", secret="s", max_presence_members=5)
    hub.replace_app(changed)
    assert all(conn.app is changed for conn in (a, b, c))
    assert hub.state(APP).app is changed
    assert hub.close_user(APP, "bob", ConnectionUnauthorized("bye")) == 1
    assert b.close_code == 4009 and a.close_code is None
