"""Pushwire: a self-hosted, Pusher-Channels-compatible real-time push server."""

__version__ = "0.1.0"
