"""HMAC-SHA256 signatures: channel authorization, user sign-in, REST requests, webhooks.

Every comparison of a signature is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

EMPTY_MD5 = hashlib.md5(b"").hexdigest()
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=1024)
def _pads(secret: str) -> tuple[_Hash, _Hash]:
    """HMAC-SHA256's inner and outer hash states after the padded key (RFC 2104), made once
    per secret: a signature then costs two hash copies instead of a new HMAC object."""
    key = secret.encode()
    if len(key) > 64:  # SHA-256's block size
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def hmac_hex(secret: str, message: str | bytes) -> str:
    """Hex HMAC-SHA256 of `message` with `secret` (the same as `hmac.new(...).hexdigest()`)."""
    data = message.encode() if isinstance(message, str) else message
    inner, outer = _pads(secret)
    h = inner.copy()
    h.update(data)
    o = outer.copy()
    o.update(h.digest())
    return o.hexdigest()


def channel_string_to_sign(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def user_string_to_sign(socket_id: str, user_data: str) -> str:
    return f"{socket_id}::user::{user_data}"


def sign_auth(key: str, secret: str, string_to_sign: str) -> str:
    """The `auth` token an app's auth endpoint returns: `<key>:<hex HMAC>`."""
    return f"{key}:{hmac_hex(secret, string_to_sign)}"


def verify_auth(key: str, secret: str, string_to_sign: str, auth: object) -> bool:
    """Whether `auth` is `<key>:<signature of string_to_sign>`, compared in constant time."""
    if not isinstance(auth, str):
        return False
    expected = sign_auth(key, secret, string_to_sign)
    return hmac.compare_digest(expected.encode(), auth.encode())


def shared_secret(channel: str, master_key: bytes) -> str:
    """The base64 shared secret of a private-encrypted channel: SHA256(channel || master_key)."""
    return base64.b64encode(hashlib.sha256(channel.encode() + master_key).digest()).decode()


def rest_string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """`METHOD\\npath\\nk=v&...` with keys lower-cased and sorted, values not URL-escaped.

    `auth_signature` is left out.
    """
    return _string_to_sign(method, path, [(k.lower(), v) for k, v in params])


def _string_to_sign(method: str, path: str, lowered: list[tuple[str, str]]) -> str:
    """`rest_string_to_sign` of params whose keys are lower-cased already."""
    pairs = [p for p in lowered if p[0] != "auth_signature"]
    pairs.sort()
    query = "&".join([f"{k}={v}" for k, v in pairs])
    return f"{method.upper()}\n{path}\n{query}"


def sign_rest(
    key: str,
    secret: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes = b"",
    timestamp: int | None = None,
) -> dict[str, str]:
    """The full signed query of a REST request (used by clients, tests and benchmarks)."""
    import time

    query = dict(params)
    query["auth_key"] = key
    query["auth_timestamp"] = str(int(time.time()) if timestamp is None else timestamp)
    query["auth_version"] = "1.0"
    if body:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    query["auth_signature"] = hmac_hex(secret, rest_string_to_sign(method, path, query.items()))
    return query


class RestAuthError(Exception):
    """A REST request whose authentication fails (HTTP 401)."""


def verify_rest(
    *,
    key: str,
    secret: str | Sequence[str],
    method: str,
    path: str,
    params: Iterable[tuple[str, str]],
    body: bytes | None,
    now: float,
    window: float = 600.0,
    has_body: bool = False,
) -> None:
    """Check a REST request's signature; raise RestAuthError with the reason if it fails.

    Checks, in order: the required parameters, the key, `auth_version`, the timestamp window,
    `body_md5` against the MD5 recomputed from the raw body, then the HMAC in constant time.

    `secret` may be several (during a rotation's grace: the new one and the old one).
    `body=None` checks everything that does not need the body (the HMAC covers `body_md5`,
    so a forged request is refused before its body is read); `has_body` says one follows,
    which then needs a `body_md5`. Call `verify_body_md5` once the body is read.
    """
    plist = params if isinstance(params, list) else list(params)
    lowered = [(k.lower(), v) for k, v in plist]
    query = dict(lowered)
    if len(query) != len(lowered):  # a repeated name: refused for the signed ones
        seen: set[str] = set()
        for lk, _ in lowered:
            if lk in seen and lk.startswith(("auth_", "body_md5")):
                raise RestAuthError(f"Duplicate query parameter {lk}")
            seen.add(lk)
    for required in ("auth_key", "auth_timestamp", "auth_signature"):
        if required not in query:
            raise RestAuthError(f"Missing query parameter {required}")
    if not hmac.compare_digest(query["auth_key"].encode(), key.encode()):
        raise RestAuthError("Unknown auth_key")
    if query.get("auth_version", "1.0") != "1.0":
        raise RestAuthError("Unsupported auth_version (only 1.0)")
    try:
        ts = int(query["auth_timestamp"])
    except ValueError:
        raise RestAuthError("auth_timestamp must be an integer (unix seconds)") from None
    if abs(int(now) - ts) > window:  # integers: a 400-digit timestamp must not overflow
        raise RestAuthError(
            f"Timestamp expired: auth_timestamp {ts} is more than {int(window)} s from server time "
            f"{int(now)}"
        )
    if body is None:
        if has_body and "body_md5" not in query:
            raise RestAuthError("Missing query parameter body_md5 (required with a body)")
    else:
        _verify_body_md5(query.get("body_md5"), body)
    to_sign = _string_to_sign(method, path, lowered)
    given = query["auth_signature"].encode()
    if isinstance(secret, str):
        secret = (secret,)
    for s in secret:  # (current, previous); each comparison in constant time
        if hmac.compare_digest(hmac_hex(s, to_sign).encode(), given):
            return
    raise RestAuthError("Invalid signature: it does not match the signed request")


def verify_body_md5(params: Iterable[tuple[str, str]], body: bytes) -> None:
    """The body's MD5 must equal the signed `body_md5` (required when there is a body)."""
    _verify_body_md5(next((v for k, v in params if k.lower() == "body_md5"), None), body)


def _verify_body_md5(given: str | None, body: bytes) -> None:
    if not body and given is None:
        return
    if given is None:
        raise RestAuthError("Missing query parameter body_md5 (required with a body)")
    actual = hashlib.md5(body).hexdigest()
    if not hmac.compare_digest(given.encode(), actual.encode()):
        raise RestAuthError("body_md5 does not match the MD5 of the request body")


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of a bearer token from a request with the expected one (a
    header may carry undecodable bytes: they simply do not match)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def webhook_signature(secret: str, body: bytes) -> str:
    return hmac_hex(secret, body)
