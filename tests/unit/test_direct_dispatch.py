"""The HTTP layer's direct dispatch of the REST ingest routes (transport/http.py): taken only
when the router would pick the same handler with nothing else in between."""

from __future__ import annotations

from aiohttp import web

from pushwire.config import load
from pushwire.server import create_app
from pushwire.transport.http import direct_routes


async def _nothing(request: web.Request) -> web.Response:
    return web.Response()


def test_the_ingest_routes_are_served_directly():
    app = create_app(load(None, env={}))
    routes = direct_routes(app)
    assert sorted(routes) == ["batch_events", "events"]


def test_a_middleware_turns_direct_dispatch_off():
    app = create_app(load(None, env={}))

    @web.middleware
    async def mw(request: web.Request, handler):  # type: ignore[no-untyped-def]
        return await handler(request)

    app.middlewares.append(mw)
    assert direct_routes(app) == {}


def test_a_response_signal_turns_direct_dispatch_off():
    app = create_app(load(None, env={}))

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        return None

    app.on_response_prepare.append(hook)
    assert direct_routes(app) == {}


def test_a_resource_the_router_could_prefer_turns_direct_dispatch_off():
    for path in ("/apps/special/events", "/apps/{x}", "/{tail:.*}", "/apps", "/"):
        app = create_app(load(None, env={}))
        app.router.add_post(path, _nothing)
        assert direct_routes(app) == {}, path


def test_unrelated_resources_keep_direct_dispatch():
    app = create_app(load(None, env={}))
    app.router.add_post("/other/{x}/events", _nothing)
    app.router.add_get("/application", _nothing)
    assert sorted(direct_routes(app)) == ["batch_events", "events"]


def test_the_api_role_off_means_no_direct_routes():
    app = create_app(load(None, env={}, overrides={"role": "websocket"}))
    assert direct_routes(app) == {}
