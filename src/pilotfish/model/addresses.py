"""Whether a host names this machine: the control plane asks only Envoys on loopback, and
the agent reaches its CA in plaintext only on loopback. Both layers import this one test."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback IP (127.0.0.0/8, ::1), brackets stripped."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere
