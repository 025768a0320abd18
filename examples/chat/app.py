"""A small chat on Pushwire: an aiohttp backend with an auth endpoint, and a page using the
browser client served by Pushwire at /pushwire.js. Presence list, messages and typing
indicators are client events on a presence channel: the backend only signs subscriptions.

    pushwire serve                                   # terminal 1 (demo app)
    python examples/chat/app.py --port 8080          # terminal 2, then open
    http://127.0.0.1:8080/?name=Alice  and  http://127.0.0.1:8080/?name=Bob
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from aiohttp import web

from pushwire.client import authorize_channel

HERE = Path(__file__).resolve().parent
ROOM = "presence-chat"


def make_app(pushwire_url: str, key: str, secret: str) -> web.Application:
    page = (HERE / "index.html").read_text()
    page = page.replace("{{PUSHWIRE_URL}}", pushwire_url).replace("{{KEY}}", key)

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def auth(request: web.Request) -> web.Response:
        form = await request.post()
        socket_id, channel = str(form.get("socket_id", "")), str(form.get("channel_name", ""))
        name = request.query.get("name", "")
        if channel != ROOM or not re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", name):
            return web.json_response({"error": "forbidden"}, status=403)
        body = authorize_channel(
            key, secret, socket_id, channel, {"user_id": name, "user_info": {"name": name}}
        )
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/auth", auth)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--pushwire-url", default="http://127.0.0.1:6001")
    ap.add_argument("--key", default="app-key")
    ap.add_argument("--secret", default="app-secret")
    args = ap.parse_args()
    web.run_app(
        make_app(args.pushwire_url, args.key, args.secret), host="127.0.0.1", port=args.port
    )


if __name__ == "__main__":
    main()
