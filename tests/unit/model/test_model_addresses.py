"""Which hosts count as this machine."""

from __future__ import annotations

import pytest

from pilotfish.model.addresses import is_loopback


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["10.1.2.3", "0.0.0.0", "::", "example.com", "localhost.example.com", "", "[]"]
)
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)
