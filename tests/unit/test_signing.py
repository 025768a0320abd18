"""Signature vectors from PROTOCOL.md section 2 (key 278d425bdf160c739803)."""

import hashlib

import pytest

from pushwire.protocol import signing

KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"


def test_private_channel_vector():
    s = signing.channel_string_to_sign("1234.1234", "private-foobar")
    assert s == "1234.1234:private-foobar"
    assert signing.sign_auth(KEY, SECRET, s) == (
        "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    )


def test_presence_channel_vector():
    data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    s = signing.channel_string_to_sign("1234.1234", "presence-foobar", data)
    assert signing.hmac_hex(SECRET, s) == (
        "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    )


def test_user_signin_vector():
    s = signing.user_string_to_sign("1234.1234", '{"id":"12345"}')
    assert s == '1234.1234::user::{"id":"12345"}'
    assert signing.sign_auth(KEY, SECRET, s) == (
        "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    )


def test_rest_vector():
    params = {
        "auth_key": KEY,
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
    }
    s = signing.rest_string_to_sign("POST", "/apps/3/events", params.items())
    assert s == (
        "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179"
        "&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
    )
    assert signing.hmac_hex(SECRET, s) == (
        "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    )


def test_verify_auth_rejects_wrong_key_and_types():
    s = "1.2:private-x"
    good = signing.sign_auth(KEY, SECRET, s)
    assert signing.verify_auth(KEY, SECRET, s, good)
    assert not signing.verify_auth(KEY, SECRET, s, "otherkey:" + good.split(":")[1])
    assert not signing.verify_auth(KEY, SECRET, s, None)
    assert not signing.verify_auth(KEY, SECRET, "1.3:private-x", good)


def _signed(body=b'{"a":1}', ts=1_000_000, **extra):
    q = signing.sign_rest(KEY, SECRET, "POST", "/apps/3/events", extra, body, timestamp=ts)
    return list(q.items())


def verify(params, body=b'{"a":1}', now=1_000_000, path="/apps/3/events"):
    signing.verify_rest(
        key=KEY, secret=SECRET, method="POST", path=path, params=params, body=body, now=now
    )


def test_verify_rest_accepts_a_signed_request():
    verify(_signed())
    verify(_signed(), now=1_000_000 + 600)  # edge of the window


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p, b: (p, b'{"a":2}'), "body_md5 does not match"),
        (
            lambda p, b: ([x for x in p if x[0] != "body_md5"], b),
            "Missing query parameter body_md5",
        ),
        (lambda p, b: ([x for x in p if x[0] != "auth_signature"], b), "auth_signature"),
        (
            lambda p, b: ([(k, "0" * 64 if k == "auth_signature" else v) for k, v in p], b),
            "Invalid signature",
        ),
        (lambda p, b: ([(k, "other" if k == "auth_key" else v) for k, v in p], b), "auth_key"),
        (
            lambda p, b: ([(k, "2.0" if k == "auth_version" else v) for k, v in p], b),
            "auth_version",
        ),
        (lambda p, b: ([(k, "x" if k == "auth_timestamp" else v) for k, v in p], b), "integer"),
    ],
)
def test_verify_rest_rejections(mutate, reason):
    params, body = mutate(_signed(), b'{"a":1}')
    with pytest.raises(signing.RestAuthError, match=reason):
        verify(params, body)


def test_verify_rest_timestamp_window():
    with pytest.raises(signing.RestAuthError, match="Timestamp expired"):
        verify(_signed(), now=1_000_000 + 601)
    with pytest.raises(signing.RestAuthError, match="Timestamp expired"):
        verify(_signed(), now=1_000_000 - 601)


def test_verify_rest_signed_path_matters():
    with pytest.raises(signing.RestAuthError, match="Invalid signature"):
        verify(_signed(), path="/apps/4/events")


def test_verify_rest_empty_body_md5_on_get_is_accepted():
    # pusher-http-python sends body_md5 of the empty body even on GET
    q = {"body_md5": hashlib.md5(b"").hexdigest()}
    params = signing.sign_rest(KEY, SECRET, "GET", "/apps/3/channels", q, b"", timestamp=5)
    signing.verify_rest(
        key=KEY,
        secret=SECRET,
        method="GET",
        path="/apps/3/channels",
        params=list(params.items()),
        body=b"",
        now=5,
    )


def test_shared_secret_matches_sdk_definition():
    master = bytes(range(32))
    expected = hashlib.sha256(b"private-encrypted-x" + master).digest()
    import base64

    assert (
        signing.shared_secret("private-encrypted-x", master) == base64.b64encode(expected).decode()
    )


@pytest.mark.parametrize(
    "secret", ["", "s", "x" * 63, "x" * 64, "x" * 65, "y" * 200, "sécret-ü", SECRET]
)
def test_hmac_hex_is_hmac_sha256(secret):
    import hmac as std_hmac

    for message in ("", "POST\n/apps/3/events\nauth_key=k", "é" * 100, b"\x00\xff" * 70):
        raw = message.encode() if isinstance(message, str) else message
        expected = std_hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        assert signing.hmac_hex(secret, message) == expected


def test_rest_string_to_sign_lowercases_sorts_and_drops_the_signature():
    s = signing.rest_string_to_sign(
        "post", "/p", [("b", "2"), ("Auth_Signature", "x"), ("A", "1"), ("a", "0")]
    )
    assert s == "POST\n/p\na=0&a=1&b=2"


def test_verify_rest_refuses_a_repeated_signed_parameter():
    params = _signed()
    with pytest.raises(signing.RestAuthError, match="Duplicate query parameter auth_timestamp"):
        verify([*params, ("AUTH_TIMESTAMP", "1000000")])
    # an unsigned name may repeat (it is signed as given, both times)
    q = signing.sign_rest(KEY, SECRET, "POST", "/apps/3/events", {}, b'{"a":1}', 1_000_000)
    extra = [("x", "1"), ("x", "2")]
    pairs = [(k, v) for k, v in q.items() if k != "auth_signature"] + extra
    sig = signing.hmac_hex(SECRET, signing.rest_string_to_sign("POST", "/apps/3/events", pairs))
    verify([*pairs, ("auth_signature", sig)])


def test_verify_rest_accepts_any_of_several_secrets():
    params = _signed()
    signing.verify_rest(
        key=KEY,
        secret=("new-secret", SECRET),
        method="POST",
        path="/apps/3/events",
        params=params,
        body=b'{"a":1}',
        now=1_000_000,
    )
    with pytest.raises(signing.RestAuthError, match="Invalid signature"):
        signing.verify_rest(
            key=KEY,
            secret=("new-secret", "older"),
            method="POST",
            path="/apps/3/events",
            params=params,
            body=b'{"a":1}',
            now=1_000_000,
        )
