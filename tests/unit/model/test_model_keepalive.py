from __future__ import annotations

import pytest

from pilotfish.errors import PilotfishError
from pilotfish.model.keepalive import XdsKeepalive, milliseconds


def test_defaults_ping_every_ten_seconds_and_drop_a_silent_proxy_within_fifteen() -> None:
    policy = XdsKeepalive()
    assert (policy.proxy_ping_interval, policy.proxy_ping_timeout) == (10.0, 5.0)
    assert (policy.server_ping_interval, policy.server_ping_timeout) == (10.0, 5.0)
    assert policy.dead_proxy_bound == 15.0
    # The proxies' pings must never count as abuse.
    assert 0 < policy.min_ping_interval < policy.proxy_ping_interval


@pytest.mark.parametrize("value", [0.0, -1.0, 0.0001, float("nan")])
@pytest.mark.parametrize(
    "name",
    ["proxy_ping_interval", "proxy_ping_timeout", "server_ping_interval", "server_ping_timeout"],
)
def test_a_period_that_would_switch_pings_off_is_refused(name: str, value: float) -> None:
    with pytest.raises(PilotfishError, match=f"keepalive {name} must be at least 0.001 s"):
        XdsKeepalive(**{name: value})


def test_negative_strikes_are_refused() -> None:
    with pytest.raises(PilotfishError, match="max_ping_strikes"):
        XdsKeepalive(max_ping_strikes=-1)


def test_milliseconds_are_whole_and_never_zero() -> None:
    assert milliseconds(1.5) == 1500
    assert milliseconds(0.0004) == 1
