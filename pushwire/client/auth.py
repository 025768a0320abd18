"""What an app's auth endpoint returns, and webhook verification (pure functions)."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from ..protocol.channels import Kind, channel_type
from ..protocol.signing import (
    channel_string_to_sign,
    shared_secret,
    sign_auth,
    user_string_to_sign,
    webhook_signature,
)


def authorize_channel(
    key: str,
    secret: str,
    socket_id: str,
    channel: str,
    presence_data: Mapping[str, Any] | None = None,
    encryption_master_key: bytes | str | None = None,
) -> dict[str, str]:
    """The JSON body for a private, presence or private-encrypted subscription.

    `presence_data` is `{"user_id": ..., "user_info": {...}}` (presence channels only);
    `encryption_master_key` (32 bytes, or base64) is needed for private-encrypted channels.
    """
    ctype = channel_type(channel)
    out: dict[str, str] = {}
    channel_data = None
    if ctype.presence:
        if presence_data is None or "user_id" not in presence_data:
            raise ValueError("presence channels need presence_data with a user_id")
        channel_data = orjson.dumps(dict(presence_data)).decode()
        out["channel_data"] = channel_data
    out["auth"] = sign_auth(key, secret, channel_string_to_sign(socket_id, channel, channel_data))
    if ctype.kind is Kind.ENCRYPTED:
        if encryption_master_key is None:
            raise ValueError("private-encrypted channels need the encryption master key")
        mk = encryption_master_key
        if isinstance(mk, str):
            mk = base64.b64decode(mk)
        if len(mk) != 32:
            raise ValueError("the encryption master key must be 32 bytes")
        out["shared_secret"] = shared_secret(channel, mk)
    return out


def authenticate_user(
    key: str, secret: str, socket_id: str, user: Mapping[str, Any]
) -> dict[str, str]:
    """The JSON body for `pusher:signin`: `user` must contain a non-empty string `id`."""
    if not isinstance(user.get("id"), str) or not user["id"]:
        raise ValueError("user data needs a non-empty string 'id'")
    user_data = orjson.dumps(dict(user)).decode()
    return {
        "auth": sign_auth(key, secret, user_string_to_sign(socket_id, user_data)),
        "user_data": user_data,
    }


def verify_webhook(
    key: str, secret: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any] | None:
    """The decoded webhook body if `X-Pusher-Key` and `X-Pusher-Signature` check out."""
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("x-pusher-key") != key:
        return None
    given = lower.get("x-pusher-signature", "")
    if not hmac.compare_digest(given.encode(), webhook_signature(secret, body).encode()):
        return None
    decoded = orjson.loads(body)
    return decoded if isinstance(decoded, dict) else None
