"""Loopback ports: ask the OS for a free one, and wait until something listens on one."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

from pilotfish.errors import PilotfishError


class PortTimeoutError(PilotfishError, TimeoutError):
    """Nothing accepted connections on a port within the time allowed.

    Also a ``TimeoutError``, so callers can treat it like any other timeout.
    """


# Ports chosen for listeners come from below the kernel's ephemeral range, where outgoing
# connections never take their local port: a port from the range (what binding port 0 gives)
# can be taken by any connect() before the listener binds it, which is then refused for good.
LISTENER_PORTS_FLOOR = 10000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768


def ephemeral_range_low(range_file: Path = _EPHEMERAL_RANGE) -> int:
    """The first port the kernel may give an outgoing connection (32768 where unknown)."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def free_port(host: str = "127.0.0.1", *, attempts: int = 200) -> int:
    """A port free right now for a listener on ``host``, from below the ephemeral range.

    The OS is asked by binding a randomly chosen candidate. Still racy between two callers that
    draw the same number before either binds it, but no longer with every outgoing connection
    on the machine. Where the range leaves no room below it, the OS picks (port 0).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ceiling = ephemeral_range_low()
    if ceiling - LISTENER_PORTS_FLOOR >= 1000:
        draw = random.SystemRandom()
        for _ in range(attempts):
            candidate = draw.randrange(LISTENER_PORTS_FLOOR, ceiling)
            with socket.socket(family) as probe:
                try:
                    probe.bind((host, candidate))
                except OSError:
                    continue
                return candidate
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, timeout: float, *, interval: float = 0.05) -> None:
    """Return once a TCP connection to ``host:port`` succeeds; raise after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: OSError | None = None
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), max(0.01, deadline - loop.time())
            )
        except (OSError, TimeoutError) as exc:
            last_error = exc if isinstance(exc, OSError) else last_error
            await asyncio.sleep(interval)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise PortTimeoutError(f"nothing listens on {host}:{port} after {timeout}s: {last_error}")
