"""The protocol session logic without sockets: FakeConnection, a memory-backend node, a clock."""

import orjson
import pytest

from pushwire.apps.model import App
from pushwire.config import Config, ServerConfig
from pushwire.protocol import errors
from pushwire.protocol.signing import channel_string_to_sign, sign_auth, user_string_to_sign
from pushwire.testing import FakeClock, FakeConnection, make_handler

APP = App(id="1", key="k", secret="s", max_presence_members=2, client_event_rate=10)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def handler(clock):
    cfg = Config(server=ServerConfig(activity_timeout=120, pong_timeout=30), apps=(APP,))
    return make_handler(cfg, clock)


async def connect(handler, app=APP):
    conn = FakeConnection(app, now=handler.clock())
    await handler.open(conn)
    return conn


async def send(handler, conn, obj):
    await handler.on_text(conn, obj if isinstance(obj, str | bytes) else orjson.dumps(obj))


def auth(conn, channel, data=None):
    return sign_auth("k", "s", channel_string_to_sign(conn.socket_id, channel, data))


async def subscribe(handler, conn, channel, user=None, info=None):
    d = {"channel": channel}
    if channel.startswith(("private-", "presence-")):
        cd = None
        if user is not None:
            cd = orjson.dumps({"user_id": user, "user_info": info}).decode()
            d["channel_data"] = cd
        d["auth"] = auth(conn, channel, cd)
    await send(handler, conn, {"event": "pusher:subscribe", "data": d})


def data(ev):
    return orjson.loads(ev["data"]) if isinstance(ev.get("data"), str) else ev.get("data")


async def test_connection_established(handler):
    conn = await connect(handler)
    (ev,) = conn.take()
    assert ev["event"] == "pusher:connection_established"
    assert data(ev) == {"socket_id": conn.socket_id, "activity_timeout": 120}


@pytest.mark.parametrize(
    ("key", "query", "exc"),
    [
        ("nope", {"protocol": "7"}, errors.AppNotFound),
        ("k", {}, errors.NoProtocolVersion),
        ("k", {"protocol": "4"}, errors.UnsupportedProtocol),
        ("k", {"protocol": "8"}, errors.UnsupportedProtocol),
        ("k", {"protocol": "x"}, errors.UnsupportedProtocol),
        ("k", {"protocol": "7", "version": "not a version!"}, errors.InvalidVersion),
    ],
)
def test_handshake_refusals(handler, key, query, exc):
    with pytest.raises(exc) as info:
        handler.check_handshake(key, query)
    assert info.value.close


def test_handshake_accepts_real_clients(handler):
    for v in ("8.6.0", "2.4.4", "10.1.5", "7.0.0-rc.1"):
        assert handler.check_handshake("k", {"protocol": "7", "version": v}) is APP


async def test_connection_quota(clock):
    app = App(id="1", key="k", secret="s", max_connections=1)
    h = make_handler(Config(apps=(app,)), clock)
    await connect(h, app)
    conn = FakeConnection(app)
    with pytest.raises(errors.OverConnectionQuota):
        await h.open(conn)
    assert conn.close_code == 4004
    assert data(conn.events()[0])["code"] == 4004


async def test_ping_pong_and_malformed(handler):
    conn = await connect(handler)
    conn.take()
    await send(handler, conn, {"event": "pusher:ping", "data": {}})
    await send(handler, conn, "not json")
    await send(handler, conn, "[1,2]")
    await send(handler, conn, {"event": 5})
    await send(handler, conn, {"event": "pusher:subscribe", "data": 7})
    await send(handler, conn, {"event": "nonsense"})
    handler.on_binary(conn)
    evs = conn.take()
    assert conn.wire() == []
    assert evs[0] == {"event": "pusher:pong", "data": {}}
    assert [data(e)["code"] for e in evs[1:]] == [4300] * 6
    assert conn.close_code is None


async def test_public_subscribe_and_publish(handler):
    a, b = await connect(handler), await connect(handler)
    await subscribe(handler, a, "news")
    await subscribe(handler, b, "news")
    assert a.take()[-1] == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "news",
        "data": "{}",
    }
    stats = await handler.engine.channel_stats(APP, "news")
    assert stats.subscription_count == 2
    await send(handler, a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    assert (await handler.engine.channel_stats(APP, "news")).subscription_count == 1


async def test_private_auth(handler):
    conn = await connect(handler)
    conn.take()
    await send(
        handler,
        conn,
        {"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": "k:bad"}},
    )
    evs = conn.take()
    assert evs[0]["event"] == "pusher:subscription_error"
    assert data(evs[0])["status"] == 401
    assert evs[1]["event"] == "pusher:error" and data(evs[1])["code"] == 4009
    await subscribe(handler, conn, "private-a")
    assert conn.take()[0]["event"] == "pusher_internal:subscription_succeeded"


async def test_presence_members_first_and_last_connection(handler):
    a1, a2, b = await connect(handler), await connect(handler), await connect(handler)
    await subscribe(handler, b, "presence-r", "bob", {"n": "B"})
    b.take()
    await subscribe(handler, a1, "presence-r", "alice", {"n": "A"})
    ok = a1.take()[-1]
    assert data(ok)["presence"] == {
        "ids": ["bob", "alice"],
        "hash": {"bob": {"n": "B"}, "alice": {"n": "A"}},
        "count": 2,
    }
    assert [e["event"] for e in b.take()] == ["pusher_internal:member_added"]
    await subscribe(handler, a2, "presence-r", "alice", {"n": "A"})  # second tab: no event
    assert b.take() == []
    await handler.on_close(a1)
    assert b.take() == []
    await handler.on_close(a2)
    (ev,) = b.take()
    assert ev["event"] == "pusher_internal:member_removed"
    assert data(ev) == {"user_id": "alice"}
    assert list(await handler.engine.members(APP, "presence-r")) == ["bob"]


async def test_presence_numeric_user_id_and_limits(handler):
    conns = [await connect(handler) for _ in range(3)]
    await subscribe(handler, conns[0], "presence-x", 1)
    await subscribe(handler, conns[1], "presence-x", 2)
    await subscribe(handler, conns[2], "presence-x", 3)
    evs = conns[2].take()
    assert evs[-2]["event"] == "pusher:subscription_error"
    assert data(evs[-1])["code"] == 4100
    assert list(await handler.engine.members(APP, "presence-x")) == ["1", "2"]


async def test_presence_channel_data_must_be_string(handler):
    conn = await connect(handler)
    conn.take()
    cd = {"user_id": "1"}
    await send(
        handler,
        conn,
        {
            "event": "pusher:subscribe",
            "data": {
                "channel": "presence-a",
                "auth": auth(conn, "presence-a", orjson.dumps(cd).decode()),
                "channel_data": cd,
            },
        },
    )
    assert data(conn.take()[-1])["code"] == 4305


async def test_client_events_rules(handler, clock):
    a, b = await connect(handler), await connect(handler)
    await subscribe(handler, a, "presence-c", "alice")
    await subscribe(handler, b, "presence-c", "bob")
    await subscribe(handler, a, "public")
    a.take(), b.take()
    await send(handler, a, {"event": "client-hi", "channel": "presence-c", "data": {"x": 1}})
    assert a.take() == []  # no echo
    assert b.take() == [
        {"event": "client-hi", "channel": "presence-c", "data": {"x": 1}, "user_id": "alice"}
    ]
    await send(handler, a, {"event": "client-hi", "channel": "public", "data": {}})
    await send(handler, a, {"event": "client-hi", "channel": "private-other", "data": {}})
    await send(handler, a, {"event": "client-hi", "channel": "presence-c", "data": "x" * 10241})
    assert [data(e)["code"] for e in a.take()] == [4304, 4304, 4303]
    for _ in range(12):
        await send(handler, a, {"event": "client-hi", "channel": "presence-c", "data": {}})
    codes = [data(e)["code"] for e in a.take()]
    assert codes == [4301, 4301, 4301]  # 13 sent within one second, bucket of 10
    clock.advance(1.0)
    await send(handler, a, {"event": "client-hi", "channel": "presence-c", "data": {}})
    assert a.take() == []


async def test_client_events_disabled(clock):
    app = App(id="1", key="k", secret="s", enable_client_messages=False)
    h = make_handler(Config(apps=(app,)), clock)
    conn = await connect(h, app)
    await subscribe(h, conn, "private-a")
    conn.take()
    await send(h, conn, {"event": "client-x", "channel": "private-a", "data": {}})
    assert data(conn.take()[0])["code"] == 4304


async def test_signin_and_server_to_user(handler):
    conn = await connect(handler)
    other = await connect(handler)
    conn.take()
    ud = '{"id":"u1","watchlist":[]}'
    await send(
        handler, conn, {"event": "pusher:signin", "data": {"user_data": ud, "auth": "k:bad"}}
    )
    assert data(conn.take()[0])["code"] == 4009
    good = sign_auth("k", "s", user_string_to_sign(conn.socket_id, ud))
    await send(handler, conn, {"event": "pusher:signin", "data": {"user_data": ud, "auth": good}})
    assert conn.take() == [
        {"event": "pusher:signin_success", "data": {"user_data": ud}}
    ]
    await subscribe(handler, conn, "#server-to-user-u1")
    assert conn.take()[0]["event"] == "pusher_internal:subscription_succeeded"
    await subscribe(handler, other, "#server-to-user-u1")
    assert data(other.take()[-1])["code"] == 4009
    assert await handler.engine.terminate_user(APP, "u1") == 1
    assert conn.close_code == 4009


async def test_heartbeat_ping_then_4201(handler, clock):
    conn = await connect(handler)
    conn.take()
    clock.advance(119)
    handler.sweep()
    assert conn.take() == []
    clock.advance(1)
    handler.sweep()
    assert conn.take() == [{"event": "pusher:ping", "data": {}}]
    clock.advance(29)
    handler.sweep()
    assert conn.close_code is None
    clock.advance(1)
    handler.sweep()
    assert conn.close_code == 4201


async def test_pong_resets_heartbeat(handler, clock):
    conn = await connect(handler)
    clock.advance(120)
    handler.sweep()
    await send(handler, conn, {"event": "pusher:pong", "data": {}})
    clock.advance(60)
    handler.sweep()
    assert conn.close_code is None


async def test_cache_channel_replay_and_miss(handler):
    from pushwire import api

    a = await connect(handler)
    await subscribe(handler, a, "cache-x")
    assert a.take()[-1] == {"event": "pusher:cache_miss", "channel": "cache-x"}
    await api.trigger(handler.engine, APP, {"name": "e", "channel": "cache-x", "data": "d"})
    b = await connect(handler)
    b.take()
    await subscribe(handler, b, "cache-x")
    assert b.take()[-1] == {"event": "e", "channel": "cache-x", "data": "d"}


async def signin(handler, conn, user_data):
    good = sign_auth("k", "s", user_string_to_sign(conn.socket_id, user_data))
    await send(
        handler, conn, {"event": "pusher:signin", "data": {"user_data": user_data, "auth": good}}
    )


async def test_watchlist_online_offline(clock):
    app = App(id="1", key="k", secret="s", enable_watchlist_events=True, max_watchlist_size=2)
    h = make_handler(Config(apps=(app,)), clock)
    bob = await connect(h, app)
    await signin(h, bob, '{"id":"bob"}')
    alice = await connect(h, app)
    alice.take()
    await signin(h, alice, '{"id":"alice","watchlist":["bob","carol","dave"]}')
    evs = alice.take()
    assert evs[0]["event"] == "pusher:signin_success"
    assert data(evs[1])["code"] == 4302  # only the first 2 ids are watched
    assert evs[2] == {
        "event": "pusher_internal:watchlist_events",
        "data": orjson.dumps(
            {
                "events": [
                    {"name": "online", "user_ids": ["bob"]},
                    {"name": "offline", "user_ids": ["carol"]},
                ]
            }
        ).decode(),
    }
    carol = await connect(h, app)
    await signin(h, carol, '{"id":"carol"}')
    assert data(alice.take()[0]) == {"events": [{"name": "online", "user_ids": ["carol"]}]}
    await h.on_close(bob)
    assert data(alice.take()[0]) == {"events": [{"name": "offline", "user_ids": ["bob"]}]}
    dave = await connect(h, app)
    await signin(h, dave, '{"id":"dave"}')
    assert alice.take() == []  # not watched: beyond the limit


async def test_user_authentication_timeout(clock):
    app = App(
        id="1", key="k", secret="s", enable_user_authentication=True, user_authentication_timeout=30
    )
    h = make_handler(Config(apps=(app,)), clock)
    idle, signed, private = [await connect(h, app) for _ in range(3)]
    await signin(h, signed, '{"id":"u"}')
    await subscribe(h, private, "private-a")
    clock.advance(30)
    h.sweep()
    assert idle.close_code == 4009
    assert signed.close_code is None and private.close_code is None


async def test_subscription_count_opt_in(clock):
    app = App(id="1", key="k", secret="s", enable_subscription_count=True)
    h = make_handler(Config(apps=(app,)), clock)
    a, b = await connect(h, app), await connect(h, app)
    await subscribe(h, a, "counted")
    assert a.take()[-1] == {
        "event": "pusher_internal:subscription_count",
        "channel": "counted",
        "data": '{"subscription_count":1}',
    }
    await subscribe(h, b, "counted")
    assert data(a.take()[-1]) == {"subscription_count": 2}
    await h.on_close(b)
    assert data(a.take()[-1]) == {"subscription_count": 1}
    await subscribe(h, a, "presence-p", "u")  # never on presence channels
    assert all(e["event"] != "pusher_internal:subscription_count" for e in a.take())


async def test_subscription_count_off_by_default(handler):
    a = await connect(handler)
    await subscribe(handler, a, "quiet")
    assert [e["event"] for e in a.take()][-1] == "pusher_internal:subscription_succeeded"


async def test_json_nested_deeper_than_can_be_sent_is_refused(handler):
    conn = await connect(handler)
    conn.take()
    deep = "[" * 300 + "]" * 300
    await send(handler, conn, '{"event":"client-x","channel":"private-a","data":' + deep + "}")
    (ev,) = conn.take()
    assert ev["event"] == "pusher:error" and data(ev)["code"] == 4300
    assert "nested too deeply" in data(ev)["message"]
    assert not conn.closed
    await send(handler, conn, {"event": "pusher:ping", "data": {}})
    assert conn.take() == [{"event": "pusher:pong", "data": {}}]
