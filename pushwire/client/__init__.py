"""Python clients for Pushwire and any Pusher-compatible server.

- `PushwireClient`: asyncio WebSocket client (channels, presence, client events, sign-in,
  reconnection).
- `RestClient` (sync, keep-alive) and `AsyncRestClient` (aiohttp): the REST API.
- `authorize_channel`, `authenticate_user`, `verify_webhook`: helpers for an app's backend.
"""

from .auth import authenticate_user, authorize_channel, verify_webhook
from .rest import AsyncRestClient, RestClient, RestError
from .ws import Channel, ClientEventError, Members, PushwireClient, SubscriptionError

__all__ = [
    "AsyncRestClient",
    "Channel",
    "ClientEventError",
    "Members",
    "PushwireClient",
    "RestClient",
    "RestError",
    "SubscriptionError",
    "authenticate_user",
    "authorize_channel",
    "verify_webhook",
]
