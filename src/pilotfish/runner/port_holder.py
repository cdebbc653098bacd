"""Can a sidecar listener bind a loopback port, and if not, which process holds it.

An ``upstreams`` entry with a fixed ``localPort`` that another program already holds would
leave the app talking to that program: the runner asks here before it starts the replica.
"""

from __future__ import annotations

import socket
from pathlib import Path

_LISTEN = "0A"  # the state column of /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN)


def port_taken(port: int, proc: Path = Path("/proc")) -> str | None:
    """None when a listener can bind 127.0.0.1:``port``; else why not, naming the process
    that listens there when /proc says (it may not: another user's process, no /proc)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As Envoy binds its listeners: connections of an earlier listener left in
        # TIME_WAIT do not stop it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
        else:
            return None
    holders = _listening_processes(port, proc)
    return f"{reason}, held by {', '.join(holders)}" if holders else reason


def listening_inodes(table: str, port: int) -> set[int]:
    """The socket inodes listening on ``port`` (any address) in a /proc/net/tcp{,6} table."""
    inodes: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        _, _, local_port = fields[1].rpartition(":")
        if int(local_port, 16) == port:
            inodes.add(int(fields[9]))
    return inodes


def _listening_processes(port: int, proc: Path) -> list[str]:
    inodes: set[int] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            inodes |= listening_inodes((proc / table).read_text(), port)
        except OSError:
            continue
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: list[str] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            holds = any(str(fd.readlink()) in wanted for fd in (entry / "fd").iterdir())
            if holds:
                found.append(f"pid {entry.name} ({(entry / 'comm').read_text().strip()})")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return sorted(found)
