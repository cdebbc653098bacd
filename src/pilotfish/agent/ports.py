"""Loopback ports: ask the OS for a free one, and wait until something listens on one."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
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


class PortPicker:
    """Free ports for one owner (a mesh's replicas, say), never the same one twice.

    ``free_port`` only asks the OS whether a port is free now; nothing is bound until the
    caller's listener starts, so two draws in a row can return the same number (a mesh of 30
    ports drawn at random below the ephemeral range repeats one about once in 50 meshes). The
    picker remembers the last ``remembered`` ports it gave and draws again on a repeat.
    """

    def __init__(
        self, draw: Callable[[], int] = free_port, *, remembered: int = 10_000, attempts: int = 50
    ) -> None:
        self._draw = draw
        self._given: OrderedDict[int, None] = OrderedDict()
        self._remembered = remembered
        self._attempts = attempts

    def pick(self) -> int:
        for _ in range(self._attempts):
            port = self._draw()
            if port not in self._given:
                self._given[port] = None
                while len(self._given) > self._remembered:
                    self._given.popitem(last=False)
                return port
        raise PilotfishError(f"no free port that was not given already in {self._attempts} draws")


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
