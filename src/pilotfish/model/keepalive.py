"""HTTP/2 keepalive on the xDS connection, one policy for both of its ends.

The proxy (Envoy's bootstrap, written by the agent) and the xDS server (grpc's channel options)
must agree on it: grpc's server by default tolerates a ping without data only once per 5 minutes
and closes the connection after 2 early ones ("Too many pings"), so a proxy pinging every 10 s
would lose its stream about every 40 s and be sent everything again. Both ends read this one
dataclass, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from pilotfish.errors import PilotfishError


@dataclass(frozen=True)
class XdsKeepalive:
    """Who pings whom on an xDS connection, and how soon silence counts as a dead peer.

    Defaults suit production. Tests shorten them by passing their own instance to both ends.
    """

    proxy_ping_interval: float = 10.0
    """Seconds between the proxy's pings (Envoy's ``connection_keepalive.interval``): how a
    proxy notices a vanished control plane and reconnects elsewhere."""
    proxy_ping_timeout: float = 5.0
    """Seconds the proxy waits for a ping's answer before it drops the connection."""
    server_ping_interval: float = 10.0
    """Seconds between the server's own pings (grpc's ``keepalive_time_ms``): how the server
    notices a proxy that vanished without closing its connection (a stopped or frozen Envoy,
    a dead machine), which no write would reveal on an idle mesh."""
    server_ping_timeout: float = 5.0
    """Seconds the server waits for a ping's answer before it closes the connection."""
    max_ping_strikes: int = 2
    """Pings that come sooner than half the proxy's interval (see ``min_ping_interval``) the
    server forgives before closing the connection; grpc's own default, kept so that a client
    flooding pings is still cut off."""

    def __post_init__(self) -> None:
        for name in (
            "proxy_ping_interval",
            "proxy_ping_timeout",
            "server_ping_interval",
            "server_ping_timeout",
        ):
            value = getattr(self, name)
            # Envoy and grpc both take whole milliseconds, and 0 would switch pings off.
            if not value >= 0.001:
                raise PilotfishError(f"keepalive {name} must be at least 0.001 s, not {value!r}")
        if self.max_ping_strikes < 0:
            raise PilotfishError(
                f"keepalive max_ping_strikes must be 0 or more, not {self.max_ping_strikes!r}"
            )

    @property
    def min_ping_interval(self) -> float:
        """The shortest gap between two proxy pings the server accepts without a strike.

        Half the proxy's interval: Envoy only adds jitter to its interval, so honest pings
        never come this early, even when one is delayed and the next is not.
        """
        return self.proxy_ping_interval / 2

    @property
    def dead_proxy_bound(self) -> float:
        """Seconds after its last answer within which the server drops a proxy that stopped
        answering (and the status board loses it): the server's next ping goes out at most one
        interval later and is given up on one timeout after that. Measured with a SIGSTOPped
        Envoy: gone after 14 s with the defaults, after 1-2 s with 1 s + 1 s (the policy of
        tests/integration/test_xds_keepalive.py)."""
        return self.server_ping_interval + self.server_ping_timeout


def milliseconds(seconds: float) -> int:
    """Whole milliseconds, as grpc's channel options and Envoy's durations are counted."""
    return max(1, round(seconds * 1000))
