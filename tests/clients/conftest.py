"""Shares the pusher-js driver fixture of the compatibility tests."""

from tests.compat.conftest import js  # noqa: F401
