"""The `pusher` PyPI SDK (pusher-http-python) against `pushwire serve`."""

from __future__ import annotations

import json

import pusher
import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus, PusherForbidden

from tests.helpers.client import Client, data, nothing_before_marker

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def sdk(server):
    return sdk_for(server)


def sdk_for(server, **kw):
    args = {"app_id": "1001", "key": "py-key", "secret": "py-secret"} | kw
    return pusher.Pusher(host="127.0.0.1", port=server.port, ssl=False, **args)


async def test_trigger_batch_and_info(server, sdk):
    c = await Client.connect(server.ws_url("py-key"))
    # channel authorization made by the SDK's own helper
    auth = sdk.authenticate("presence-py", c.socket_id, {"user_id": "py1", "user_info": {}})
    await c.send({"event": "pusher:subscribe", "data": {"channel": "presence-py", **auth}})
    assert (await c.recv())["event"] == "pusher_internal:subscription_succeeded"
    assert sdk.trigger(["presence-py", "py-other"], "ev", {"a": 1}) == {}
    ev = await c.recv()
    assert ev["event"] == "ev" and json.loads(ev["data"]) == {"a": 1}
    assert sdk.trigger_batch([{"channel": "presence-py", "name": "b", "data": "x"}]) == {}
    assert (await c.recv())["event"] == "b"
    assert sdk.channels_info("presence-", ["user_count"]) == {
        "channels": {"presence-py": {"user_count": 1}}
    }
    assert sdk.channel_info("presence-py", ["user_count", "subscription_count"]) == {
        "occupied": True,
        "user_count": 1,
        "subscription_count": 1,
    }
    assert sdk.users_info("presence-py") == {"users": [{"id": "py1"}]}
    await c.close()


async def test_socket_id_exclusion(server, sdk):
    a, b = (
        await Client.connect(server.ws_url("py-key")),
        await Client.connect(server.ws_url("py-key")),
    )
    await a.subscribe("py-ex", key="py-key", secret="py-secret")
    await b.subscribe("py-ex", key="py-key", secret="py-secret")
    sdk.trigger("py-ex", "e", "d", socket_id=a.socket_id)
    assert (await b.recv())["data"] == "d"  # the SDK sends a string as it is
    await nothing_before_marker(
        server.http, "py-ex", a, b, app_id="1001", key="py-key", secret="py-secret"
    )
    await a.close(), await b.close()


async def test_signin_send_to_user_and_prefixless_terminate(server, sdk):
    c = await Client.connect(server.ws_url("py-key"))
    bystander = await Client.connect(server.ws_url("py-key"))
    signed = sdk.authenticate_user(c.socket_id, {"id": "py-user"})
    await c.send({"event": "pusher:signin", "data": signed})
    assert (await c.recv())["event"] == "pusher:signin_success"
    sdk.send_to_user("py-user", "dm", {"x": 1})
    ev = await c.recv()
    assert ev["channel"] == "#server-to-user-py-user" and ev["event"] == "dm"
    await bystander.nothing()
    # the PyPI SDK posts to /users/{id}/terminate_connections (no /apps/{id} prefix)
    assert sdk.terminate_user_connections("py-user") == {}
    assert data(await c.recv())["code"] == 4009
    await c.close(), await bystander.close()


async def test_error_statuses_raise_the_sdk_exceptions(server, sdk):
    with pytest.raises(PusherBadRequest):
        sdk.channel_info("public-x", ["user_count"])
    with pytest.raises(PusherBadAuth):
        sdk_for(server, secret="wrong").trigger("x", "e", "d")
    with pytest.raises(PusherForbidden):
        sdk_for(server, app_id="1004", key="off-key", secret="off-secret").trigger("x", "e", "d")
    with pytest.raises(PusherBadStatus, match="404"):
        sdk_for(server, app_id="9999").trigger("x", "e", "d")
    with pytest.raises(PusherBadStatus, match="413"):
        sdk.trigger("x", "e", "x" * 12000)
