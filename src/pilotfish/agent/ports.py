"""Loopback ports: ask the OS for a free one, and wait until something listens on one."""

from __future__ import annotations

import asyncio
import socket

from pilotfish.errors import PilotfishError


class PortTimeoutError(PilotfishError, TimeoutError):
    """Nothing accepted connections on a port within the time allowed.

    Also a ``TimeoutError``, so callers can treat it like any other timeout.
    """


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now.

    Racy by nature (someone may take it before the caller binds it), but the kernel hands out
    ephemeral ports round-robin, so an immediate reuse by another process is unlikely.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
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
