"""The App's own rules: which browser origins it allows."""

from __future__ import annotations

import pytest

from pushwire.apps.model import App

APP = App(
    id="a", key="k", secret="s", allowed_origins=("https://*.Example.com", "http://localhost:3000")
)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),  # case insensitive
        ("https://a.b.example.com", True),  # `*` crosses dots, like a shell pattern
        ("http://localhost:3000", True),
        ("https://example.com", False),
        ("https://x.example.com.evil.com", False),
        ("http://localhost:3001", False),
    ],
)
def test_allows_origin(origin, allowed):
    assert APP.allows_origin(origin) is allowed
