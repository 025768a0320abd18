"""The Pusher protocol v7 session logic: handshake, inbound events, heartbeats.

It sees only `Connection` objects (send / close) and an `Adapter`; no sockets. The transport
calls `check_handshake`, `open`, `on_text` / `on_binary`, `on_close`, and a timer calls
`sweep` for heartbeats and authentication timeouts.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .apps.index import AppIndex
from .apps.model import App
from .cluster.base import Unavailable
from .config import Config
from .connection import Connection
from .engine import Engine, RateKind, Recovery
from .extensions import Extensions
from .happenings import Happening, HappeningSink, NoSink
from .monitor import TrafficMonitor
from .protocol import errors, messages
from .protocol.channels import (
    USER_ID_RE,
    ChannelType,
    channel_type,
    server_to_user_id,
    validate_channel_name,
)
from .protocol.errors import PusherError
from .protocol.frames import Outbound, json_depth, loads_checked
from .protocol.positions import EPOCH_RE, MAX_OFFSET, Position
from .protocol.signing import channel_string_to_sign, user_string_to_sign, verify_auth

VERSION_RE = re.compile(r"v?\d+(\.\d+)*([-+.~][0-9A-Za-z.\-+~]*)?")
MIN_PROTOCOL, MAX_PROTOCOL = 5, 7
MAX_USER_INFO_DEPTH = 32  # presence user_info is sent on inside member lists: keep it shallow
STRIKES_TO_CLOSE = 10  # client events refused in a row by the app-wide limit before a close


def new_socket_id() -> str:
    """Pusher's `<digits>.<digits>` form."""
    return f"{secrets.randbelow(10**9) + 1}.{secrets.randbelow(10**9) + 1}"


class PusherHandler:
    def __init__(
        self,
        config: Config,
        apps: AppIndex,
        engine: Engine,
        clock: Callable[[], float],
        monitor: TrafficMonitor,
        sink: HappeningSink | None = None,
        extensions: Extensions | None = None,
    ) -> None:
        self.config = config
        self.apps = apps
        self.engine = engine
        self.clock = clock
        self.monitor = monitor
        self.sink: HappeningSink = sink or NoSink()
        self.ext = extensions or Extensions()
        self._entry = self.ext.chain(self._route)

    # Handshake ---------------------------------------------------------------------------
    def check_handshake(
        self, app_key: str, query: Mapping[str, str], origin: str | None = None
    ) -> App:
        """The app a new connection is for; raises a closing PusherError if refused."""
        app = self.apps.by_key(app_key)
        if app is None:
            raise errors.AppNotFound(f"Application does not exist: unknown app key {app_key!r}")
        if not app.enabled:
            raise errors.AppDisabled("Application disabled")
        if app.allowed_origins and origin is not None and not app.allows_origin(origin):
            raise errors.ConnectionUnauthorized(
                f"Origin not allowed: {origin[:100]!r} is not in the app's allowed_origins"
            )
        version = query.get("version")
        if version is not None and (len(version) > 64 or not VERSION_RE.fullmatch(version)):
            raise errors.InvalidVersion(f"Invalid version string format: {version[:64]!r}")
        protocol = query.get("protocol")
        if protocol is None or protocol == "":
            raise errors.NoProtocolVersion("No protocol version supplied (use ?protocol=7)")
        if not protocol.isdigit() or not MIN_PROTOCOL <= int(protocol) <= MAX_PROTOCOL:
            raise errors.UnsupportedProtocol(
                f"Unsupported protocol version {protocol[:16]!r}: "
                f"supported are {MIN_PROTOCOL} to {MAX_PROTOCOL}"
            )
        return app

    async def open(self, conn: Connection) -> None:
        """Register the connection and greet it; closes it (4004) when over quota."""
        try:
            await self.engine.connect(conn)
        except PusherError as exc:
            conn.send_error_and_close(exc)
            raise
        if self.monitor.active:
            self.monitor.emit("connect", conn.app.id, socket_id=conn.socket_id)
        self._reply(
            conn,
            messages.connection_established(conn.socket_id, self.config.server.activity_timeout),
        )

    async def on_close(self, conn: Connection) -> None:
        conn.closed = True
        if self.monitor.active:
            self.monitor.emit("disconnect", conn.app.id, socket_id=conn.socket_id)
        await self.engine.disconnect(conn)

    # Inbound -----------------------------------------------------------------------------
    def on_binary(self, conn: Connection) -> None:
        self._touch(conn)
        self._reply(conn, messages.error(errors.InvalidMessage("Binary frames are not supported")))

    def _reply(self, conn: Connection, msg: Outbound) -> None:
        self.monitor.reply(conn, msg)

    def _touch(self, conn: Connection) -> None:
        conn.last_seen = self.clock()
        conn.ping_sent_at = None

    async def on_text(self, conn: Connection, text: str | bytes) -> None:
        """Handle one inbound frame; a bad one gets `pusher:error`, never an exception."""
        self._touch(conn)
        try:
            await self._dispatch(conn, text)
        except PusherError as exc:
            if exc.close:
                conn.send_error_and_close(exc)
            else:
                self._reply(conn, messages.error(exc))

    async def _dispatch(self, conn: Connection, text: str | bytes) -> None:
        try:
            msg = loads_checked(text)
        except orjson.JSONDecodeError:
            raise errors.InvalidMessage("Invalid message: not valid JSON") from None
        except ValueError as exc:
            raise errors.InvalidMessage(f"Invalid message: {exc}") from None
        if not isinstance(msg, dict):
            raise errors.InvalidMessage("Invalid message: expected a JSON object")
        if self.monitor.active:
            self.monitor.emit(
                "in",
                conn.app.id,
                socket_id=conn.socket_id,
                event=msg.get("event"),
                channel=msg.get("channel") or _channel_of(msg),
                data=msg.get("data"),
                raw=text if isinstance(text, str) else text.decode(errors="replace"),
            )
        await self._entry(conn, msg)

    async def _route(self, conn: Connection, msg: dict[str, Any]) -> None:
        """The protocol's own handling of one message (the end of the middleware chain)."""
        event = msg.get("event")
        if not isinstance(event, str) or not event:
            raise errors.InvalidMessage("Invalid message: 'event' must be a non-empty string")
        if event == "pusher:ping":
            self._reply(conn, messages.PONG)
        elif event == "pusher:pong":
            return
        elif event == "pusher:subscribe":
            await self._subscribe(conn, _data_object(msg))
        elif event == "pusher:unsubscribe":
            data = _data_object(msg)
            channel = data.get("channel")
            if not isinstance(channel, str):
                raise errors.InvalidMessage("pusher:unsubscribe: 'channel' must be a string")
            await self.engine.unsubscribe(conn, channel)
        elif event == "pusher:signin":
            await self._signin(conn, _data_object(msg))
        elif event.startswith("client-"):
            await self._client_event(conn, event, msg)
        else:
            raise errors.InvalidMessage(f"Unsupported event {event[:64]!r}")

    # Subscriptions -----------------------------------------------------------------------
    async def _subscribe(self, conn: Connection, data: dict[str, Any]) -> None:
        app = conn.app
        name = data.get("channel")
        try:
            validate_channel_name(name, app.max_channel_name_length)
        except errors.InvalidChannel as exc:
            if isinstance(name, str):
                self._reply(conn, messages.subscription_error(name[:200], exc, 400))
            raise
        assert isinstance(name, str)
        ctype = channel_type(name)
        limit = app.max_channels_per_connection
        if name not in conn.channels and len(conn.channels) >= limit:
            refusal = errors.ChannelLimit(
                f"Subscription to {name} refused: at most {limit} channels per connection"
            )
            self._reply(conn, messages.subscription_error(name, refusal, 429))
            raise refusal
        try:
            await self._authorize_and_join(conn, name, ctype, data)
        except (errors.Unauthorized, errors.PresenceLimit, errors.InvalidChannel) as exc:
            status = {errors.Unauthorized: 401, errors.PresenceLimit: 4100}.get(type(exc), 400)
            self._reply(conn, messages.subscription_error(name, exc, status))
            raise

    async def _authorize_and_join(
        self, conn: Connection, name: str, ctype: ChannelType, data: dict[str, Any]
    ) -> None:
        app = conn.app
        recovery = _recovery(data)
        user_id = server_to_user_id(name)
        if user_id is not None:
            if conn.user_id != user_id:
                raise errors.Unauthorized(
                    f"Subscription to {name} refused: the connection is not signed in as {user_id}"
                )
            self._reply(conn, messages.subscription_succeeded(name))
            return
        member: tuple[str, Any] | None = None
        if ctype.authorized:
            auth = data.get("auth")
            channel_data = data.get("channel_data") if ctype.presence else None
            if ctype.presence and not isinstance(channel_data, str):
                raise errors.InvalidChannel(
                    f"Subscription to {name} refused: presence channels need 'channel_data' "
                    "as a JSON string"
                )
            to_sign = channel_string_to_sign(conn.socket_id, name, channel_data)
            if not self._signed(app, to_sign, auth):
                raise errors.Unauthorized(
                    f"Invalid signature: expected HMAC SHA256 hex digest of {to_sign[:300]!s}"
                    f" signed with the app secret, as '{app.key}:<signature>'"
                )
            if ctype.presence:
                assert isinstance(channel_data, str)
                member = _parse_member(app, name, channel_data)
            conn.authorized = True
        await self.engine.subscribe(conn, name, member, recovery)
        if ctype.cache:
            cached = await self.engine.cache_get(app, name)
            if cached is not None:
                self._reply(conn, cached[0])
            else:
                self._reply(conn, messages.cache_miss(name))
                # one cache_miss webhook for simultaneous subscribers, deployment-wide
                if self.sink.wants(app, Happening.CACHE_MISS) and await self.engine.claim_once(
                    f"cache_miss:{app.id}:{name}", 1.0
                ):
                    self.sink.emit(app, Happening.CACHE_MISS, name)

    def _signed(self, app: App, to_sign: str, auth: object) -> bool:
        """`auth` signs `to_sign` with the app's secret (or, in its grace, the previous one)."""
        return any(verify_auth(app.key, s, to_sign, auth) for s in app.secrets(time.time()))

    # Sign-in -----------------------------------------------------------------------------
    async def _signin(self, conn: Connection, data: dict[str, Any]) -> None:
        app = conn.app
        user_data = data.get("user_data")
        if not isinstance(user_data, str):
            raise errors.InvalidMessage("pusher:signin: 'user_data' must be a JSON string")
        to_sign = user_string_to_sign(conn.socket_id, user_data)
        if not self._signed(app, to_sign, data.get("auth")):
            raise errors.Unauthorized(
                f"Invalid signature: expected HMAC SHA256 hex digest of {to_sign[:300]!s}"
            )
        try:
            user = orjson.loads(user_data)
        except orjson.JSONDecodeError:
            raise errors.InvalidMessage("pusher:signin: 'user_data' is not valid JSON") from None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id:
            raise errors.InvalidMessage("pusher:signin: user_data must contain a non-empty 'id'")
        if len(user_id) > app.max_presence_user_id_length or not USER_ID_RE.fullmatch(user_id):
            raise errors.InvalidMessage(f"pusher:signin: invalid user id {user_id[:64]!r}")
        if conn.user_id is not None and conn.user_id != user_id:
            raise errors.Unauthorized(
                "pusher:signin refused: this connection is signed in as another user"
            )
        watchlist = user.get("watchlist", [])
        if not isinstance(watchlist, list) or not all(isinstance(w, str) for w in watchlist):
            raise errors.InvalidMessage("pusher:signin: 'watchlist' must be a list of user ids")
        over = len(watchlist) > app.max_watchlist_size
        if conn.user_id is None:  # a second sign-in as the same user keeps the first watchlist
            conn.watchlist = tuple(watchlist[: app.max_watchlist_size])
        await self.engine.sign_in(conn, user_id, user_data)
        conn.authorized = True
        self._reply(conn, messages.signin_success(user_data))
        if over:
            self._reply(
                conn,
                messages.error(
                    errors.WatchlistLimit(
                        f"Watchlist limit exceeded: only the first {app.max_watchlist_size} "
                        "user ids are watched"
                    )
                ),
            )
        if app.enable_watchlist_events and conn.watchlist:
            online = await self.engine.online_users(app, conn.watchlist)
            online_set = set(online)
            offline = [u for u in conn.watchlist if u not in online_set]
            events = []
            if online:
                events.append({"name": "online", "user_ids": online})
            if offline:
                events.append({"name": "offline", "user_ids": offline})
            self._reply(conn, messages.watchlist_events(events))

    # Client events -----------------------------------------------------------------------
    async def _client_event(self, conn: Connection, event: str, msg: dict[str, Any]) -> None:
        app = conn.app
        if not app.enable_client_messages:
            raise errors.ClientEventRejected("Client events are not enabled for this app")
        if len(event) > app.max_event_name_length:
            raise errors.ClientEventRejected(
                f"Client event rejected - event name longer than {app.max_event_name_length}"
            )
        channel = msg.get("channel")
        if not isinstance(channel, str):
            raise errors.ClientEventRejected("Client event rejected - 'channel' must be a string")
        if not channel_type(channel).accepts_client_events:
            raise errors.ClientEventRejected(
                "Client event rejected - only supported on private and presence channels"
            )
        if channel not in conn.channels:
            raise errors.ClientEventRejected(
                f"Client event rejected - not subscribed to channel {channel[:200]}"
            )
        data = msg.get("data")
        if len(orjson.dumps(data)) > app.max_message_size:
            raise errors.MessageTooLarge(
                f"Client event rejected - data larger than {app.max_message_size} bytes"
            )
        now = self.clock()
        rate = app.client_event_rate
        tokens = min(rate, conn.bucket_tokens + (now - conn.bucket_at) * rate)
        conn.bucket_at = now
        if tokens < 1.0:
            conn.bucket_tokens = tokens
            raise errors.RateLimited(
                f"Client event rejected due to rate limit ({rate:g} per second)"
            )
        conn.bucket_tokens = tokens - 1.0
        limit = app.max_client_events_per_sec
        if limit and await self.engine.rate_limited(app, RateKind.CLIENT_EVENTS, 1, limit):
            conn.strikes += 1
            if conn.strikes >= STRIKES_TO_CLOSE:  # it keeps at it: let it reconnect later
                raise errors.OverCapacity(
                    f"Over capacity: the app's client events exceed {limit:g} per second"
                )
            raise errors.RateLimited(
                f"Client event rejected: the app's client events exceed {limit:g} per second"
            )
        conn.strikes = 0
        user_id = conn.channels[channel]
        custom = self.ext.client_events.get(event)
        if custom is not None and await custom(conn, channel, data) is False:
            return  # the extension handled it instead of the broadcast
        out = messages.channel_event(event, channel, data, user_id)
        try:
            await self.engine.publish(app, channel, out, conn.socket_id)
        except Unavailable:
            raise errors.ClientEventRejected(
                "Client event not confirmed on every server: the cluster bus or store is "
                "unavailable"
            ) from None
        if self.monitor.active:
            self.monitor.emit(
                "publish",
                app.id,
                socket_id=conn.socket_id,
                event=event,
                channel=channel,
                raw=out.payload.decode(),
            )
        if self.sink.wants(app, Happening.CLIENT_EVENT):
            self.sink.emit(
                app,
                Happening.CLIENT_EVENT,
                channel,
                event=event,
                data=data if isinstance(data, str) else orjson.dumps(data).decode(),
                socket_id=conn.socket_id,
                user_id=user_id,
            )

    # Timers ------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Ping idle clients, close those whose pong is late (4201) or that never
        authenticated when the app requires it (4009). Called by one timer for all sockets."""
        now = self.clock()
        server = self.config.server
        for conn in self.engine.connections():
            app = conn.app
            if conn.closed:
                continue
            if conn.ping_sent_at is not None:
                if now - conn.ping_sent_at >= server.pong_timeout:
                    conn.send_error_and_close(
                        errors.PongTimeout("Pong reply not received in time")
                    )
                    continue
            elif now - conn.last_seen >= server.activity_timeout:
                self._reply(conn, messages.PING)
                conn.ping_sent_at = now
            if (
                app.enable_user_authentication
                and not conn.authorized
                and now - conn.opened_at >= app.user_authentication_timeout
            ):
                conn.send_error_and_close(
                    errors.ConnectionUnauthorized(
                        "Connection is unauthorized: sign in or subscribe to a private "
                        "channel in time"
                    )
                )


def _channel_of(msg: dict[str, Any]) -> Any:
    data = msg.get("data")
    return data.get("channel") if isinstance(data, dict) else None


def _data_object(msg: dict[str, Any]) -> dict[str, Any]:
    data = msg.get("data")
    if isinstance(data, str):  # some clients double-encode their data too
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            data = None
    if not isinstance(data, dict):
        raise errors.InvalidMessage(f"Invalid message: {msg['event']} needs a 'data' object")
    return data


def _recovery(data: dict[str, Any]) -> Recovery | None:
    """A subscribe's `recover` (a Pushwire extension): absent for Pusher clients; `{}` to get
    history positions; `{"epoch": E, "offset": N}` to also recover what came after them."""
    recover = data.get("recover")
    if recover is None:
        return None
    if not isinstance(recover, dict):
        raise errors.InvalidMessage("pusher:subscribe: 'recover' must be an object")
    if not recover:
        return Recovery()
    epoch, offset = recover.get("epoch"), recover.get("offset")
    if not isinstance(epoch, str) or not EPOCH_RE.fullmatch(epoch):
        raise errors.InvalidMessage(
            "pusher:subscribe: 'recover.epoch' must be the epoch the server sent (1-32 letters "
            "or digits)"
        )
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise errors.InvalidMessage(
            "pusher:subscribe: 'recover.offset' must be the offset the server sent (an integer "
            ">= 0)"
        )
    return Recovery(Position(epoch, offset))


def _parse_member(app: App, channel: str, channel_data: str) -> tuple[str, Any]:
    try:
        parsed = orjson.loads(channel_data)
    except orjson.JSONDecodeError:
        raise errors.InvalidChannel("Invalid channel_data: not valid JSON") from None
    if not isinstance(parsed, dict):
        raise errors.InvalidChannel("Invalid channel_data: expected a JSON object")
    user_id = parsed.get("user_id")
    if isinstance(user_id, int | float) and not isinstance(user_id, bool):
        user_id = str(int(user_id)) if float(user_id).is_integer() else str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise errors.InvalidChannel("Invalid channel_data: 'user_id' must be a string or number")
    if len(user_id) > app.max_presence_user_id_length:
        raise errors.InvalidChannel(
            f"Invalid channel_data: user_id longer than {app.max_presence_user_id_length}"
        )
    user_info = parsed.get("user_info")
    if json_depth(user_info, MAX_USER_INFO_DEPTH) > MAX_USER_INFO_DEPTH:
        raise errors.InvalidChannel(
            f"Invalid channel_data: user_info nested deeper than {MAX_USER_INFO_DEPTH} levels"
        )
    if user_info is not None and len(orjson.dumps(user_info)) > app.max_presence_member_size:
        raise errors.InvalidChannel(
            f"Invalid channel_data: user_info larger than {app.max_presence_member_size} bytes"
        )
    return user_id, user_info
