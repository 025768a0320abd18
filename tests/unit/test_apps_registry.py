"""The app registry's logic over an in-memory store (no sockets): reloads, bad rows, live
effects on open connections, and secret rotation's grace window."""

from __future__ import annotations

import time

import orjson

from pushwire.apps.model import App, app_settings
from pushwire.config import Config
from pushwire.protocol.signing import channel_string_to_sign, sign_auth, sign_rest, verify_rest
from pushwire.testing import FakeConnection, make_node
from tests.helpers.app_store import MemoryAppStore

A = App(id="a", key="ka", secret="sa")
B = App(id="b", key="kb", secret="sb")


async def setup(*apps: App):
    store = MemoryAppStore([app_settings(a) for a in apps])
    node = make_node(Config(apps=apps), store=store)
    await node.registry.start()
    return node.registry.apps, node, store, node.registry


async def connect(node, app):
    conn = FakeConnection(app, now=node.handler.clock())
    await node.handler.open(conn)
    conn.take()
    return conn


async def test_changes_apply_to_open_connections():
    apps, node, store, registry = await setup(A, B)
    a, b = await connect(node, A), await connect(node, B)
    await store.update("a", {**app_settings(A), "enabled": False})
    await registry.reload()
    assert a.close_code == 4003 and a.events()[-1]["data"]["code"] == 4003
    assert apps.by_key("ka") is not None and not apps.by_key("ka").enabled
    await store.delete("b")
    await registry.reload()
    assert b.close_code == 4001
    assert apps.by_id("b") is None and apps.by_key("kb") is None


async def test_changed_limits_apply_at_once():
    apps, node, store, registry = await setup(A)
    conn = await connect(node, A)
    await store.update("a", {**app_settings(A), "enable_client_messages": False})
    await registry.reload()
    assert conn.app.enable_client_messages is False and conn.close_code is None


async def test_a_bad_row_keeps_the_last_good_settings_and_a_new_one_is_refused(caplog):
    apps, node, store, registry = await setup(A, B)
    b = await connect(node, B)
    await store.update("b", {**app_settings(B), "max_batch_size": -1})
    await registry.reload()
    assert apps.by_id("b") == B and b.close_code is None  # a typo disconnects no one
    assert "app store: app 'b'" in caplog.text and "max_batch_size" in caplog.text
    assert "last good settings" in caplog.text
    lines = caplog.text.count("app store: app 'b'")
    await registry.reload()  # logged once, not on every reload
    assert caplog.text.count("app store: app 'b'") == lines
    await store.create({"id": "c", "key": "kc", "secret": "sc", "max_batch_size": 0})
    await registry.reload()
    assert apps.by_id("c") is None and "this app is refused" in caplog.text
    assert apps.by_id("a") is not None


async def test_rotation_keeps_the_old_secret_for_the_grace_window():
    apps, node, store, registry = await setup(A)
    rotated = {
        **app_settings(A),
        "secret": "new",
        "previous_secret": "sa",
        "previous_secret_until": time.time() + 60,
    }
    await store.update("a", rotated)
    await registry.reload()
    app = apps.by_id("a")
    assert app is not None
    for secret in ("new", "sa"):  # channel auth with either secret
        conn = await connect(node, app)
        auth = sign_auth("ka", secret, channel_string_to_sign(conn.socket_id, "private-x", None))
        msg = {"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": auth}}
        await node.handler.on_text(conn, orjson.dumps(msg))
        assert conn.take()[-1]["event"] == "pusher_internal:subscription_succeeded", secret
    q = sign_rest("ka", "sa", "GET", "/apps/a/channels", {}, b"")
    verify_rest(
        key="ka", secret=app.secrets(time.time()), method="GET", path="/apps/a/channels",
        params=list(q.items()), body=b"", now=time.time(),
    )  # fmt: skip
    # after the grace window only the new secret signs
    await store.update("a", {**rotated, "previous_secret_until": time.time() - 1})
    await registry.reload()
    app = apps.by_id("a")
    assert app is not None and app.secrets(time.time()) == ("new",)
    conn = await connect(node, app)
    auth = sign_auth("ka", "sa", channel_string_to_sign(conn.socket_id, "private-x", None))
    msg = {"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": auth}}
    await node.handler.on_text(conn, orjson.dumps(msg))
    assert conn.take()[-1]["event"] == "pusher:error"


async def test_a_reload_changes_the_registry_index_not_the_config():
    config = Config(apps=(A,))
    store = MemoryAppStore([app_settings(A), app_settings(B)])
    node = make_node(config, store=store)
    await node.registry.start()
    assert config.apps == (A,)  # the config is what the file said, never changed
    apps = node.registry.apps
    assert apps.by_id("b") == B and apps.by_key("kb") == B
    # every reader looks apps up in the registry's index
    assert node.engine.apps is apps and node.handler.apps is apps and node.webhooks.apps is apps
