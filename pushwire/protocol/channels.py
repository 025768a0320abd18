"""Channel names: which are valid and what kind each one is.

Prefixes are matched including their hyphen (`private-x` is private, `privatex` is public).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import InvalidChannel

CHANNEL_NAME_RE = re.compile(r"[-a-zA-Z0-9_=@,.;]+")  # use fullmatch: `$` lets "\n" in
USER_ID_RE = re.compile(r"[-a-zA-Z0-9_=@,.;]+")
SERVER_TO_USER_PREFIX = "#server-to-user-"


class Kind(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "private-encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"


@dataclass(frozen=True, slots=True)
class ChannelType:
    kind: Kind
    cache: bool

    @property
    def authorized(self) -> bool:
        """Whether subscribing needs a signature from the app's auth endpoint."""
        return self.kind in (Kind.PRIVATE, Kind.ENCRYPTED, Kind.PRESENCE)

    @property
    def presence(self) -> bool:
        return self.kind is Kind.PRESENCE

    @property
    def accepts_client_events(self) -> bool:
        return self.kind in (Kind.PRIVATE, Kind.ENCRYPTED, Kind.PRESENCE)


_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    ("private-encrypted-cache-", ChannelType(Kind.ENCRYPTED, True)),
    ("private-encrypted-", ChannelType(Kind.ENCRYPTED, False)),
    ("private-cache-", ChannelType(Kind.PRIVATE, True)),
    ("private-", ChannelType(Kind.PRIVATE, False)),
    ("presence-cache-", ChannelType(Kind.PRESENCE, True)),
    ("presence-", ChannelType(Kind.PRESENCE, False)),
    ("cache-", ChannelType(Kind.PUBLIC, True)),
)
_PUBLIC = ChannelType(Kind.PUBLIC, False)
_SERVER_TO_USER = ChannelType(Kind.SERVER_TO_USER, False)
_PREFIX_NAMES = frozenset(prefix for prefix, _ in _PREFIXES)
_FIRST_CHARS = frozenset(p[0] for p in (*_PREFIX_NAMES, SERVER_TO_USER_PREFIX))


def channel_type(name: str) -> ChannelType:
    """The type of a (valid) channel name."""
    if name[:1] not in _FIRST_CHARS:  # most channels: no prefix to look for
        return _PUBLIC
    if name.startswith(SERVER_TO_USER_PREFIX):
        return _SERVER_TO_USER
    for prefix, ctype in _PREFIXES:
        if name.startswith(prefix):
            return ctype
    return _PUBLIC


def validate_channel_name(name: object, max_length: int = 200) -> str:
    """Return `name` if it is a channel a client or the API may use, else raise InvalidChannel.

    `#server-to-user-{id}` is the only name with a `#`; it is valid when `{id}` is a valid user id.
    """
    if not isinstance(name, str) or not name:
        raise InvalidChannel("Channel name must be a non-empty string")
    if len(name) > max_length:
        raise InvalidChannel(f"Channel name is longer than {max_length} characters: {name[:40]}...")
    if name.startswith(SERVER_TO_USER_PREFIX):
        user_id = name[len(SERVER_TO_USER_PREFIX) :]
        if not user_id or not USER_ID_RE.fullmatch(user_id):
            raise InvalidChannel(f"Invalid server-to-user channel name: {name}")
        return name
    if not CHANNEL_NAME_RE.fullmatch(name):
        raise InvalidChannel(
            f"Invalid channel name {name!r}: only A-Z a-z 0-9 and _ - = @ , . ; are allowed"
        )
    if name in _PREFIX_NAMES:
        raise InvalidChannel(f"Channel name {name!r} has a prefix but no name after it")
    return name


def server_to_user_id(name: str) -> str | None:
    """The user id of a `#server-to-user-{id}` channel, or None for any other channel."""
    if name.startswith(SERVER_TO_USER_PREFIX):
        return name[len(SERVER_TO_USER_PREFIX) :]
    return None
