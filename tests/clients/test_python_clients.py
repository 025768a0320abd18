"""The Python clients (pushwire.client) against a real server: one node and a 3-node cluster,
reconnection across a server restart, and the same channel shared with pusher-js."""

from __future__ import annotations

import asyncio

import pytest

from pushwire.client import (
    AsyncRestClient,
    ClientEventError,
    PushwireClient,
    RestClient,
    RestError,
    SubscriptionError,
    authenticate_user,
    authorize_channel,
    verify_webhook,
)
from pushwire.protocol.signing import webhook_signature
from tests.conftest import TIMEOUT, free_port, start_server

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.node]

KEY, SECRET = "app-key", "app-secret"


def signer(user_id: str = "py-1", info: dict | None = None):
    def authorize(socket_id: str, channel: str) -> dict[str, str]:
        presence = (
            {"user_id": user_id, "user_info": info or {}}
            if channel.startswith("presence-")
            else None
        )
        return authorize_channel(KEY, SECRET, socket_id, channel, presence)

    return authorize


def client(server, **kw) -> PushwireClient:
    port = server.port
    return PushwireClient(KEY, port=port, authorizer=kw.pop("authorizer", signer()), **kw)


class Inbox:
    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()

    def __call__(self, data, meta=None) -> None:
        self.items.put_nowait((data, meta))

    async def get(self):
        return await asyncio.wait_for(self.items.get(), TIMEOUT)

    async def empty(self, wait: float = 0.3) -> bool:
        await asyncio.sleep(wait)
        return self.items.empty()


async def test_rest_clients_sync_and_async(server):
    port = server.ports[0]
    c = client(server)
    await c.connect()
    ch = await c.subscribe("presence-rest")
    inbox = Inbox()
    ch.bind("ev", inbox)
    with RestClient("app-id", KEY, SECRET, port=port) as rest:
        assert rest.trigger(["presence-rest", "x"], "ev", {"n": 1}) == {}
        assert (await inbox.get())[0] == {"n": 1}
        assert rest.trigger_batch([{"channel": "presence-rest", "name": "ev", "data": "b"}]) == {}
        assert (await inbox.get())[0] == "b"
        assert rest.channels("presence-", "user_count")["channels"]["presence-rest"] == {
            "user_count": 1
        }
        assert rest.channel("presence-rest", "user_count") == {"occupied": True, "user_count": 1}
        assert rest.users("presence-rest") == {"users": [{"id": "py-1"}]}
        info = rest.trigger("presence-rest", "ev", "i", info="user_count,subscription_count")
        assert info == {"channels": {"presence-rest": {"user_count": 1, "subscription_count": 1}}}
        assert (await inbox.get())[0] == "i"
        with pytest.raises(RestError) as err:
            rest.channel("public", "user_count")
        assert err.value.status == 400
    async with AsyncRestClient("app-id", KEY, SECRET, port=port) as arest:
        assert await arest.trigger("presence-rest", "ev", "async", socket_id=c.socket_id) == {}
        assert await inbox.empty()  # excluded by socket_id
        assert (await arest.users("presence-rest"))["users"] == [{"id": "py-1"}]
    async with AsyncRestClient("app-id", KEY, "wrong", port=port) as bad:
        with pytest.raises(RestError) as err:
            await bad.trigger("x", "e", "d")
        assert err.value.status == 401
    await c.close()


async def test_ws_client_channels_presence_client_events(server):
    a = client(server, authorizer=signer("alice", {"n": "A"}))
    b = client(server, authorizer=signer("bob", {"n": "B"}))
    await a.connect(), await b.connect()
    ca = await a.subscribe("presence-py")
    assert ca.members.me == {"id": "alice", "info": {"n": "A"}}
    added = Inbox()
    ca.bind("pusher:member_added", added)
    cb = await b.subscribe("presence-py")
    assert sorted(cb.members.members) == ["alice", "bob"]
    assert (await added.get())[0] == {"id": "bob", "info": {"n": "B"}}
    typing = Inbox()
    cb.bind("client-typing", typing)
    await ca.trigger("client-typing", {"on": True})
    data, meta = await typing.get()
    assert data == {"on": True} and meta["user_id"] == "alice"
    assert set(meta) == {"user_id", "offset", "epoch"}  # the app keeps history
    with pytest.raises(ClientEventError):
        await ca.trigger("typing", {})
    removed = Inbox()
    ca.bind("pusher:member_removed", removed)
    await b.close()
    assert (await removed.get())[0]["id"] == "bob"
    assert ca.members.count == 1
    # unbind, unsubscribe
    ca.unbind("pusher:member_removed")
    await a.unsubscribe("presence-py")
    assert a.channel("presence-py") is None
    await a.close()


async def test_ws_client_bad_auth_and_missing_authorizer(server):
    bad = client(server, authorizer=lambda sid, ch: {"auth": f"{KEY}:{'0' * 64}"})
    await bad.connect()
    with pytest.raises(SubscriptionError):
        await bad.subscribe("private-nope")
    await bad.close()
    none = PushwireClient(KEY, port=server.port)
    await none.connect()
    with pytest.raises(SubscriptionError, match="authorizer"):
        await none.subscribe("private-nope")
    pub = await none.subscribe("public-ok")
    assert pub.subscribed
    await none.close()


async def test_ws_client_signin_and_send_to_user(server):
    c = PushwireClient(
        KEY,
        port=server.port,
        user_authenticator=lambda sid: authenticate_user(KEY, SECRET, sid, {"id": "py-user"}),
    )
    got = Inbox()
    c.bind_global(lambda event, data: got(data) if event == "dm" else None)
    await c.connect()
    assert (await c.signin())["id"] == "py-user"
    await asyncio.sleep(0.2)
    async with AsyncRestClient("app-id", KEY, SECRET, port=server.port) as rest:
        await rest.send_to_user("py-user", "dm", {"hi": 1})
        assert (await got.get())[0] == {"hi": 1}
        await rest.terminate_user_connections("py-user")
    for _ in range(50):
        if c.state == "failed":
            break
        await asyncio.sleep(0.1)
    assert c.state == "failed"  # 4009 is in 4000-4099: no reconnect
    assert c.close_code == 4009
    await c.close()


async def test_reconnects_after_server_restart_and_resubscribes(tmp_path):
    port = free_port()
    cfg = f"[server]\nport = {port}\n"
    srv = start_server(tmp_path, cfg)
    c = PushwireClient(KEY, port=port, authorizer=signer(), max_backoff=1.0)
    await c.connect()
    ch = await c.subscribe("private-restart")
    inbox = Inbox()
    ch.bind("ev", inbox)
    first_socket = c.socket_id
    srv.stop()  # SIGTERM: clients are told 4200 (reconnect now); then the port is closed
    await asyncio.sleep(0.5)
    srv = start_server(tmp_path, cfg)
    try:
        for _ in range(int(TIMEOUT * 10)):
            if c.state == "connected" and c.channel("private-restart").subscribed:
                break
            await asyncio.sleep(0.1)
        assert c.socket_id != first_socket
        async with AsyncRestClient("app-id", KEY, SECRET, port=port) as rest:
            await rest.trigger("private-restart", "ev", "after restart")
        assert (await inbox.get())[0] == "after restart"
    finally:
        await c.close()
        srv.stop()


async def test_interop_with_pusher_js(js, server):
    await js.connect("browser", presence={"user_id": "js-user"})
    await js.subscribe("browser", "presence-mixed")
    py = client(server, authorizer=signer("py-user"))
    await py.connect()
    ch = await py.subscribe("presence-mixed")
    assert sorted(ch.members.members) == ["js-user", "py-user"]
    await js.expect_event("browser", "pusher:member_added", "presence-mixed")
    from_js = Inbox()
    ch.bind("client-hello", from_js)
    await ch.trigger("client-hello", {"from": "python"})
    ev = await js.expect_event("browser", "client-hello", "presence-mixed")
    assert ev["data"] == {"from": "python"}
    await js.cmd(
        "trigger",
        name="browser",
        channel="presence-mixed",
        event="client-hello",
        data={"from": "js"},
    )
    data, meta = await from_js.get()
    assert data == {"from": "js"} and meta["user_id"] == "js-user"
    await py.close()


def test_webhook_helper():
    body = b'{"time_ms":1,"events":[]}'
    headers = {"X-Pusher-Key": KEY, "X-Pusher-Signature": webhook_signature(SECRET, body)}
    assert verify_webhook(KEY, SECRET, headers, body) == {"time_ms": 1, "events": []}
    assert verify_webhook(KEY, SECRET, headers, body + b" ") is None
    assert verify_webhook(KEY, "other", headers, body) is None


def test_authorize_encrypted_needs_master_key():
    with pytest.raises(ValueError, match="master key"):
        authorize_channel(KEY, SECRET, "1.2", "private-encrypted-x")
    out = authorize_channel(KEY, SECRET, "1.2", "private-encrypted-x", None, b"k" * 32)
    assert set(out) == {"auth", "shared_secret"}


async def test_auth_endpoints_over_http(server):
    """authorizer-less client: the app's auth endpoints sign, as a browser's would."""
    from aiohttp import web

    async def auth(request: web.Request) -> web.Response:
        form = await request.post()
        assert request.headers["X-Token"] == "t"
        return web.json_response(
            authorize_channel(
                KEY,
                SECRET,
                str(form["socket_id"]),
                str(form["channel_name"]),
                {"user_id": "via-http"},
            )
        )

    async def user_auth(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response(
            authenticate_user(KEY, SECRET, str(form["socket_id"]), {"id": "via-http"})
        )

    app = web.Application()
    app.router.add_post("/auth", auth)
    app.router.add_post("/user-auth", user_auth)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        c = PushwireClient(
            KEY,
            port=server.port,
            auth_endpoint=f"http://127.0.0.1:{port}/auth",
            user_auth_endpoint=f"http://127.0.0.1:{port}/user-auth",
            auth_headers={"X-Token": "t"},
        )
        await c.connect()
        ch = await c.subscribe("presence-http")
        assert ch.members.me["id"] == "via-http"
        assert (await c.signin())["id"] == "via-http"
        await c.close()
    finally:
        await runner.cleanup()


async def test_client_pings_when_idle(tmp_path):
    srv = start_server(tmp_path, "[server]\nport = 0\nactivity_timeout = 1\npong_timeout = 5\n")
    try:
        c = PushwireClient(KEY, port=srv.ports[0])
        pongs = Inbox()
        c.bind_global(lambda event, data: pongs(event) if event == "pusher:pong" else None)
        await c.connect()
        assert c.activity_timeout == 1.0  # min(own 120 s, the server's 1 s)
        assert (await pongs.get())[0] == "pusher:pong"  # it pinged when idle
        await asyncio.sleep(2.5)
        assert c.state == "connected"  # the server never had to drop it
        await c.close()
    finally:
        srv.stop()


async def test_ws_client_recovers_a_gap(server):
    """An event lost on the way (here: dropped before the client saw it) shows as a skipped
    offset on the next one: the client subscribes again from its last position and the app
    gets the lost event and the next one, in order, once each."""
    c = client(server)
    await c.connect()
    ch = await c.subscribe("gap-room")
    inbox = Inbox()
    ch.bind("ev", inbox)
    real = c._on_message
    dropped: list[str] = []

    async def lossy(msg):
        if msg.get("event") == "ev" and "lost" in str(msg.get("data")) and not dropped:
            dropped.append(msg["offset"])
            return
        await real(msg)

    c._on_message = lossy  # type: ignore[method-assign]
    async with AsyncRestClient("app-id", KEY, SECRET, port=server.port) as rest:
        for data in ("one", "lost", "next", "last"):
            await rest.trigger("gap-room", "ev", data)
            if data == "one":
                assert (await inbox.get())[0] == "one"
        got = [await inbox.get() for _ in range(3)]
    assert len(dropped) == 1
    assert [d for d, _ in got] == ["lost", "next", "last"]
    offsets = [m["offset"] for _, m in got]
    assert offsets == [dropped[0], dropped[0] + 1, dropped[0] + 2]
    assert await inbox.empty()
    await c.close()
