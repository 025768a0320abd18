"""Per-address limits and the client address behind trusted proxies (no sockets)."""

from types import SimpleNamespace

import pytest
from multidict import CIMultiDict

from pushwire.config import ServerConfig
from pushwire.metrics import Metrics
from pushwire.protocol.errors import OverCapacity
from pushwire.testing import FakeClock
from pushwire.transport.ws import AddressLimits


def request(remote: str, *xff: str) -> SimpleNamespace:
    return SimpleNamespace(remote=remote, headers=CIMultiDict(("X-Forwarded-For", h) for h in xff))


def test_new_connections_per_second_per_address():
    clock, metrics = FakeClock(), Metrics()
    limits = AddressLimits(ServerConfig(max_new_connections_per_ip_per_sec=2), metrics, clock)
    limits.admit("10.0.0.1")
    limits.admit("10.0.0.1")
    with pytest.raises(OverCapacity) as refused:
        limits.admit("10.0.0.1")
    assert refused.value.code == 4100
    limits.admit("10.0.0.2")  # another address has its own budget
    clock.advance(0.5)  # one token back
    limits.admit("10.0.0.1")
    with pytest.raises(OverCapacity):
        limits.admit("10.0.0.1")
    assert metrics.refused["ip_rate"] == 2


def test_open_connections_per_address():
    metrics = Metrics()
    limits = AddressLimits(ServerConfig(max_connections_per_ip=2), metrics, FakeClock())
    for _ in range(2):
        limits.admit("a")
        limits.opened("a")
    with pytest.raises(OverCapacity):
        limits.admit("a")
    limits.closed("a")
    limits.admit("a")
    assert metrics.refused["ip_connections"] == 1


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    cfg = ServerConfig(trusted_proxies=("10.0.0.0/8", "192.168.1.5"))
    limits = AddressLimits(cfg, Metrics(), FakeClock())
    # from a trusted proxy: the last address that is not one of ours
    assert limits.client_ip(request("10.1.2.3", "203.0.113.9")) == "203.0.113.9"
    assert limits.client_ip(request("10.1.2.3", "1.2.3.4, 203.0.113.9, 192.168.1.5")) == (
        "203.0.113.9"
    )  # a client cannot choose its address by prepending one
    # from anyone else the header is ignored
    assert limits.client_ip(request("198.51.100.7", "203.0.113.9")) == "198.51.100.7"
    # only proxies in the chain: the peer itself
    assert limits.client_ip(request("10.1.2.3", "10.9.9.9")) == "10.1.2.3"
    assert limits.client_ip(request("10.1.2.3")) == "10.1.2.3"
    # a proxy that adds its own header after the client's forged one: every header counts
    assert limits.client_ip(request("10.1.2.3", "6.6.6.6", "203.0.113.9")) == "203.0.113.9"
    untrusting = AddressLimits(ServerConfig(), Metrics(), FakeClock())
    assert untrusting.client_ip(request("10.1.2.3", "203.0.113.9")) == "10.1.2.3"
