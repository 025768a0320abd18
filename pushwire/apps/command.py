"""`pushwire apps ...`: manage apps in the store directly (`--config`), or through a running
server's admin API (`--url` and `--token`). Output: a readable table, or `--json`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from ..config import Config
from ..tables import ConfigError
from .base import StoreError
from .model import App, app_settings

COMMANDS = ("list", "show", "create", "update", "disable", "enable", "delete", "rotate-secret",
            "migrate")  # fmt: skip
LIST_COLUMNS = ("id", "key", "enabled", "max_connections", "connections")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("apps", help="list, create, change or delete apps")
    p.add_argument("action", choices=COMMANDS)
    p.add_argument("app_id", nargs="?", help="the app (all but list, create and migrate)")
    p.add_argument("--config", help="TOML configuration file naming the app store")
    p.add_argument("--url", help="a running server's base URL: use its admin API")
    p.add_argument("--token", help="the server's admin_token (with --url)")
    p.add_argument("--id", dest="new_id", help="create: the new app's id")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting (VALUE as JSON if it parses, else a string); repeatable",
    )
    p.add_argument("--secret", help="rotate-secret: the new secret (default: a random one)")
    p.add_argument("--grace", type=float, help="rotate-secret: seconds the old one stays valid")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _settings(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def run(args: argparse.Namespace, config: Config | None) -> int:
    try:
        result = asyncio.run(_http(args) if args.url else _direct(args, config))
    except (ConfigError, StoreError) as exc:
        print(f"pushwire apps: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"pushwire apps: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(BrokenPipeError):  # `| head`
        _print(result, args.json)
    return 0


def _needs_id(args: argparse.Namespace) -> str:
    if not args.app_id:
        raise ConfigError(f"'{args.action}' needs an app id")
    return str(args.app_id)


async def _direct(args: argparse.Namespace, config: Config | None) -> Any:
    from .management import AppAdmin
    from .stores import make_app_store

    if config is None:
        raise ConfigError("give --config (the store it names) or --url and --token")
    if args.action == "migrate":
        if config.apps_store.kind != "postgres":
            raise ConfigError("migrate: only the postgres store has a schema")
        from .postgres import migrate

        await migrate(config.apps_store.dsn)
        return {"migrated": True}
    store = make_app_store(config)
    admin = AppAdmin(store, config.apps_store.secret_grace)
    try:
        return await _act(args, admin)
    finally:
        await store.stop()


async def _act(args: argparse.Namespace, admin: Any) -> Any:
    action = args.action
    if action == "list":
        return [app_settings(a) for a in await admin.apps()]
    if action == "create":
        settings = _settings(args.set)
        if args.new_id or args.app_id:
            settings["id"] = args.new_id or args.app_id
        return app_settings(await admin.create(settings))
    app_id = _needs_id(args)
    app: App
    if action == "show":
        app = await admin.get(app_id)
    elif action == "update":
        app = await admin.update(app_id, _settings(args.set))
    elif action in ("disable", "enable"):
        app = await admin.set_enabled(app_id, action == "enable")
    elif action == "rotate-secret":
        app = await admin.rotate_secret(app_id, args.secret, args.grace)
    else:
        await admin.delete(app_id)
        return {"deleted": app_id}
    return app_settings(app)


async def _http(args: argparse.Namespace) -> Any:
    import aiohttp

    if not args.token:
        raise ConfigError("--url needs --token (the server's admin_token)")
    base = args.url.rstrip("/") + "/admin/apps"
    action = args.action
    method, path, body = "GET", "", None
    if action == "migrate":
        raise ConfigError("migrate works on the store directly: use --config")
    if action == "create":
        body = _settings(args.set)
        if args.new_id or args.app_id:
            body["id"] = args.new_id or args.app_id
        method = "POST"
    elif action != "list":
        path = "/" + _needs_id(args)
        if action == "update":
            method, body = "PATCH", _settings(args.set)
        elif action in ("disable", "enable"):
            method, path = "POST", path + "/" + action
        elif action == "rotate-secret":
            method, path = "POST", path + "/rotate-secret"
            pairs = (("secret", args.secret), ("grace", args.grace))
            body = {k: v for k, v in pairs if v is not None}  # --grace 0 means now
        elif action == "delete":
            method = "DELETE"
    headers = {"Authorization": f"Bearer {args.token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.request(method, base + path, json=body, headers=headers) as r,
        ):
            text = await r.text()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RuntimeError(f"{args.url}: {exc or type(exc).__name__}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        raise RuntimeError(f"HTTP {status}: not the admin API (is admin_token set?)") from None
    if status >= 400:
        raise RuntimeError(f"HTTP {status}: {answer.get('error', answer)}")
    return answer["apps"] if action == "list" else answer


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    if isinstance(result, list):
        rows = [[str(a.get(c, "")) for c in LIST_COLUMNS] for a in result]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(LIST_COLUMNS)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(LIST_COLUMNS, widths, strict=True)))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        return
    width = max((len(k) for k in result), default=0)
    for key in sorted(result):
        value = result[key]
        shown = json.dumps(value) if not isinstance(value, str) else value
        print(f"{key.ljust(width)}  {shown}")
