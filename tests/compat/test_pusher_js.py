"""pusher-js (client) and the `pusher` npm server SDK against `pushwire serve`."""

from __future__ import annotations

import asyncio

import pytest

from tests.compat.conftest import APP

pytestmark = [pytest.mark.slow, pytest.mark.node]


async def test_public_channel(js):
    await js.connect("a")
    await js.subscribe("a", "js-public")
    r = await js.rest("trigger", channels=["js-public"], event="greet", data={"hello": "world"})
    assert r == {"status": 200, "body": {}}
    ev = await js.expect_event("a", "greet", "js-public")
    assert ev["data"] == {"hello": "world"}


async def test_private_channel_and_bad_auth(js):
    await js.connect("a")
    await js.subscribe("a", "private-js")
    await js.rest("trigger", channels="private-js", event="secret", data="s3cr3t")
    assert (await js.expect_event("a", "secret", "private-js"))["data"] == "s3cr3t"
    await js.connect("bad", badAuth=True)
    await js.cmd("subscribe", name="bad", channel="private-js")
    err = await js.expect_event("bad", "pusher:subscription_error", "private-js")
    assert err["data"]["status"] == 401
    conn_err = await js.expect(lambda e: e["type"] == "error" and e["client"] == "bad")
    assert conn_err["error"]["data"]["code"] == 4009


async def test_presence_channel(js):
    await js.connect("a", presence={"user_id": "alice", "user_info": {"name": "Alice"}})
    await js.connect("b", presence={"user_id": "bob", "user_info": {"name": "Bob"}})
    ok = await js.subscribe("a", "presence-js")
    assert ok["members"] == ["alice"] and ok["me"]["id"] == "alice"
    ok = await js.subscribe("b", "presence-js")
    assert ok["members"] == ["alice", "bob"]
    added = await js.expect_event("a", "pusher:member_added", "presence-js")
    assert added["data"] == {"id": "bob", "info": {"name": "Bob"}}
    r = await js.rest("get", path="/channels/presence-js/users")
    assert r == {"status": 200, "body": {"users": [{"id": "alice"}, {"id": "bob"}]}}
    r = await js.rest("get", path="/channels/presence-js", params={"info": "user_count"})
    assert r["body"] == {"occupied": True, "user_count": 2}
    await js.cmd("disconnect", name="b")
    removed = await js.expect_event("a", "pusher:member_removed", "presence-js")
    assert removed["data"]["id"] == "bob"
    members = await js.cmd("members", name="a", channel="presence-js")
    assert members["ids"] == ["alice"]


async def test_second_tab_of_same_user_is_one_member(js):
    await js.connect("a", presence={"user_id": "carol"})
    await js.connect("a2", presence={"user_id": "carol"})
    await js.connect("w", presence={"user_id": "watcher"})
    await js.subscribe("w", "presence-tabs")
    await js.subscribe("a", "presence-tabs")
    await js.expect_event("w", "pusher:member_added", "presence-tabs")
    await js.subscribe("a2", "presence-tabs")
    await js.cmd("disconnect", name="a")
    await js.none(lambda e: e.get("event", "").startswith("pusher:member_"))
    await js.cmd("disconnect", name="a2")
    await js.expect_event("w", "pusher:member_removed", "presence-tabs")


async def test_encrypted_channel(js):
    await js.connect("a")
    await js.subscribe("a", "private-encrypted-js")
    r = await js.rest(
        "trigger", channels="private-encrypted-js", event="enc", data={"card": "4242"}
    )
    assert r["status"] == 200
    ev = await js.expect_event("a", "enc", "private-encrypted-js")
    assert ev["data"] == {"card": "4242"}  # decrypted by pusher-js with the shared secret


async def test_cache_channel(js):
    await js.rest("trigger", channels="cache-js", event="last", data={"n": 1})
    await js.connect("a")
    await js.cmd("subscribe", name="a", channel="cache-js")
    await js.expect_event("a", "pusher:subscription_succeeded", "cache-js")
    assert (await js.expect_event("a", "last", "cache-js"))["data"] == {"n": 1}
    await js.cmd("subscribe", name="a", channel="cache-js-empty")
    await js.expect_event("a", "pusher:cache_miss", "cache-js-empty")


async def test_client_events(js):
    await js.connect("a", presence={"user_id": "u-a"})
    await js.connect("b", presence={"user_id": "u-b"})
    await js.subscribe("a", "presence-ce")
    await js.subscribe("b", "presence-ce")
    await js.cmd(
        "trigger", name="a", channel="presence-ce", event="client-typing", data={"on": True}
    )
    ev = await js.expect_event("b", "client-typing", "presence-ce")
    assert ev["data"] == {"on": True}
    await js.none(lambda e: e.get("client") == "a" and e.get("event") == "client-typing")
    await js.subscribe("a", "public-ce")
    await js.cmd("trigger", name="a", channel="public-ce", event="client-x", data={})
    err = await js.expect(lambda e: e["type"] == "error" and e["client"] == "a")
    assert err["error"]["data"]["code"] == 4304


async def test_signin_send_to_user_terminate(js):
    await js.connect("a", user={"id": "user-7", "user_info": {"name": "Seven"}})
    await js.connect("other")
    await js.cmd("signin", name="a")
    await asyncio.sleep(0.3)  # pusher-js subscribes to #server-to-user-user-7 after signin
    r = await js.rest("sendToUser", userId="user-7", event="dm", data={"text": "hi"})
    assert r["status"] == 200
    ev = await js.expect(lambda e: e["type"] == "user_event" and e["event"] == "dm")
    assert ev["client"] == "a" and ev["data"] == {"text": "hi"}
    r = await js.rest("terminateUserConnections", userId="user-7")
    assert r == {"status": 200, "body": {}}
    await js.expect(
        lambda e: (
            e["type"] == "state"
            and e["client"] == "a"
            and e["state"] in ("disconnected", "failed", "unavailable")
        )
    )
    await js.none(
        lambda e: e["type"] == "state" and e["client"] == "other" and e["state"] != "connected",
        wait=0.2,
    )


async def test_rest_error_statuses_through_node_sdk(js):
    r = await js.rest("get", path="/channels", params={"info": "user_count"})
    assert r["status"] == 400
    bad = dict(APP, secret="wrong")
    r = await js.rest("trigger", app=bad, channels="x", event="e", data="d")
    assert r["status"] == 401
    off = {"id": "1004", "key": "off-key", "secret": "off-secret"}
    r = await js.rest("trigger", app=off, channels="x", event="e", data="d")
    assert r["status"] == 403
    nope = {"id": "no-such-app", "key": "app-key", "secret": "app-secret"}
    r = await js.rest("trigger", app=nope, channels="x", event="e", data="d")
    assert r["status"] == 404
    r = await js.rest("trigger", channels="x", event="e", data="x" * 11000)
    assert r["status"] == 413
