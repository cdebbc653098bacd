"""Transparent interception, done: network namespaces, veths, iptables, hosts files, cleanup.

The thin I/O shell around ``netns_plan``. Everything made is removed by ``close()``; if ``up``
dies before that (SIGKILL), a reaper child that holds a pipe from it removes it when the
pipe closes, and the next ``up`` sweeps whatever a dead ``up`` left (its pid is in every name).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from pilotfish.errors import PilotfishError
from pilotfish.runner.netns_plan import (
    Command,
    HostNetwork,
    ReplicaNetwork,
    choose_subnet,
    hosts_path,
    leftovers,
    namespace_owner,
    owned_by,
    replica_teardown,
)

log = logging.getLogger("pilotfish.runner.netns")

_CLONE_NEWNET = 0x40000000
_LOCK_PATH = Path("/run/lock/pilotfish-netns.lock")
_NETNS_DIR = Path("/run/netns")
_ETC_NETNS = Path("/etc/netns")
_TOOLS = ("ip", "iptables-restore", "setpriv")


class InterceptionError(PilotfishError):
    """Transparent interception cannot be set up here; the message says why and what to use."""


def interception_problem() -> str | None:
    """Why ``interception: transparent`` cannot run on this machine, or None if it can."""
    instead = (
        "set MeshConfig spec.interception: explicit (the default) and mesh clients through "
        "HTTP_PROXY, or, for TCP clients and those that ignore HTTP_PROXY, the Workload's "
        "spec.upstreams local ports"
    )
    if not sys.platform.startswith("linux"):
        return f"transparent interception needs Linux network namespaces; {instead}"
    if os.geteuid() != 0:
        return (
            "transparent interception needs root (it creates network namespaces, veth pairs "
            f"and iptables rules): run `pilotfish up` as root, or {instead}"
        )
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"transparent interception needs {', '.join(missing)} on PATH (Debian packages "
            f"iproute2, iptables, util-linux); install them, or {instead}"
        )
    return None


def run(command: Command, *, check: bool = True) -> str:
    try:
        done = subprocess.run(
            command.argv, input=command.stdin, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise InterceptionError(f"cannot run {' '.join(command.argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise InterceptionError(
            f"`{' '.join(command.argv)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def _quietly(command: Command) -> None:
    # Teardown goes on past what is already gone.
    run(command, check=False)


def namespace_names() -> list[str]:
    # `ip netns list` prints "name (id: N)"; the directory is what it reads.
    with contextlib.suppress(FileNotFoundError):
        return sorted(entry.name for entry in _NETNS_DIR.iterdir())
    return []


def root_link_names() -> list[str]:
    names = []
    for line in run(Command(("ip", "-o", "link", "show"))).splitlines():
        _, _, rest = line.partition(": ")
        names.append(rest.split(":", 1)[0].split("@", 1)[0])
    return names


def root_routes() -> list[ipaddress.IPv4Network]:
    routes = []
    for line in run(Command(("ip", "-4", "route", "show", "table", "all"))).splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast", "blackhole"):
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            routes.append(ipaddress.IPv4Network(words[0], strict=False))
    return routes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_in(namespace: str) -> list[int]:
    out = run(Command(("ip", "netns", "pids", namespace)), check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def delete_namespace(namespace: str) -> None:
    for command in replica_teardown(namespace, _pids_in(namespace)):
        _quietly(command)
    shutil.rmtree(_ETC_NETNS / namespace, ignore_errors=True)


def delete_links(links: list[str]) -> None:
    for link in links:
        _quietly(Command(("ip", "link", "delete", link)))


def clean_up_after(pid: int) -> None:
    """Remove every namespace, link and hosts file of the ``up`` with ``pid``."""
    names = namespace_names()
    namespaces = sorted(owned_by(pid, names), key=lambda name: name.endswith("-hub"))
    for namespace in namespaces:
        delete_namespace(namespace)
    delete_links(owned_by(pid, root_link_names()))
    _remove_hosts_dirs(lambda owner: owner == pid)


def sweep_leftovers() -> None:
    """Delete what an ``up`` that is no longer alive left behind."""
    namespaces, links = leftovers(namespace_names(), root_link_names(), _alive)
    for namespace in namespaces:
        log.warning("removing network namespace %s left by an earlier `pilotfish up`", namespace)
        delete_namespace(namespace)
    delete_links(links)
    _remove_hosts_dirs(lambda owner: not _alive(owner))


def _remove_hosts_dirs(matches: Callable[[int], bool]) -> None:
    with contextlib.suppress(FileNotFoundError):
        for entry in _ETC_NETNS.iterdir():
            owner = namespace_owner(entry.name)
            if owner is not None and matches(owner):
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    # Two `up`s choosing a subnet at once would both see it free.
    _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK_PATH.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class NetworkNamespaces:
    """The namespaces of one ``up``: ``open()`` makes the hub, ``add_replica`` one namespace
    per replica, ``close()`` removes all of it."""

    def __init__(self, host: HostNetwork, reaper: subprocess.Popen[bytes]) -> None:
        self.host = host
        self._reaper = reaper
        self._slots: set[int] = set()

    @classmethod
    def open(cls) -> NetworkNamespaces:
        problem = interception_problem()
        if problem is not None:
            raise InterceptionError(problem)
        sweep_leftovers()
        pid = os.getpid()
        # The reaper first: from here on, whatever we make is removed however we end.
        reaper = subprocess.Popen(
            [sys.executable, "-m", "pilotfish.runner.netns_reaper", str(pid)],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to our terminal must not end it before us
        )
        try:
            with _host_lock():
                host = HostNetwork(pid, choose_subnet(root_routes()))
                for command in host.setup():
                    run(command)
        except BaseException:
            clean_up_after(pid)
            _stop_reaper(reaper)
            raise
        log.info(
            "transparent interception: replicas in %s, the control plane at %s",
            host.subnet,
            host.host_address,
        )
        return cls(host, reaper)

    def add_replica(self, app_port: int) -> ReplicaNetwork:
        slot = next(n for n in range(len(self._slots) + 1) if n not in self._slots)
        replica = self.host.replica(slot)
        self._slots.add(slot)
        try:
            for command in replica.setup(app_port):
                run(command)
        except BaseException:
            self.remove_replica(replica)
            raise
        return replica

    def remove_replica(self, replica: ReplicaNetwork) -> None:
        delete_namespace(replica.namespace)
        self._slots.discard(replica.slot)

    def close(self) -> None:
        clean_up_after(self.host.pid)
        _stop_reaper(self._reaper)


def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
    if reaper.stdin is not None:
        reaper.stdin.close()  # it cleans (nothing is left) and exits
    try:
        reaper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reaper.kill()


def write_hosts_file(namespace: str, text: str) -> None:
    """In place, never by rename: a running process sees the file bind-mounted at its start."""
    path = Path(hosts_path(namespace))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as hosts:
        hosts.seek(0)
        if hosts.read() == text:
            return
        hosts.seek(0)
        hosts.truncate()
        hosts.write(text)


def socket_in_namespace(namespace: str) -> socket.socket:
    """A TCP socket of ``namespace`` (a socket keeps the namespace it was made in): only this
    thread enters the namespace, and only for the call."""
    libc = ctypes.CDLL(None, use_errno=True)
    with (
        open("/proc/thread-self/ns/net") as own,
        open(_NETNS_DIR / namespace) as target,
    ):
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot enter network namespace {namespace}")
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if libc.setns(own.fileno(), _CLONE_NEWNET) != 0:
                # A thread stuck in a replica's namespace would misroute whatever it does next.
                os.abort()


async def wait_for_port_in(namespace: str, port: int, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port`` inside ``namespace``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: OSError | None = None
    while loop.time() < deadline:
        sock = await asyncio.to_thread(socket_in_namespace, namespace)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 1.0)
            return
        except (OSError, TimeoutError) as exc:
            last_error = exc if isinstance(exc, OSError) else last_error
        finally:
            sock.close()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} in {namespace}: {last_error}")
