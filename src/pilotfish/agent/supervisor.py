"""Keep one Envoy running next to a workload: restart it when it dies, drain it on shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pilotfish.agent.bootstrap import build_bootstrap
from pilotfish.agent.envoy_process import (
    EnvoyOptions,
    EnvoyProcess,
    EnvoyStartError,
    LineSink,
    describe_exit,
)
from pilotfish.model.proxy import ProxyNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts; a run that stayed up long enough resets it."""

    first_delay: float = 0.2
    max_delay: float = 10.0
    stable_after: float = 30.0
    """Seconds of uptime after which a crash counts as a fresh incident, not a crash loop."""

    def delay(self, consecutive_failures: int) -> float:
        if consecutive_failures <= 0:
            return 0.0
        # The exponent is bounded so that hours of crash looping cannot overflow a float.
        doublings = min(consecutive_failures - 1, 64)
        return min(self.max_delay, self.first_delay * 2.0**doublings)

    def failures_after_exit(self, consecutive_failures: int, uptime: float) -> int:
        return 1 if uptime >= self.stable_after else consecutive_failures + 1


class SupervisedEnvoy(Protocol):
    """What the supervisor needs of one Envoy run; ``EnvoyProcess`` is the real one."""

    @property
    def pid(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def admin_url(self) -> str | None: ...
    @property
    def recent_output(self) -> tuple[str, ...]: ...
    async def start(self) -> None: ...
    async def wait(self) -> int: ...
    async def drain(self, grace_seconds: float) -> int | None: ...
    async def stop(self, timeout: float | None = None) -> int | None: ...


class Sidecar:
    """Supervises the Envoy of one proxy (a sidecar or a gateway).

    Either await ``run()`` in a task of your own, or ``await start()``, which runs it in the
    background and returns once Envoy is first ready. ``run()`` raises ``EnvoyStartError`` if
    the very first start fails (a bad bootstrap does not heal by retrying); after that it
    restarts Envoy with backoff until ``shutdown()``.

    ``admin_port`` 0 lets Envoy pick one, which then changes on every restart; pass a fixed
    port (``free_port()``) when something outside must keep finding the admin API.
    """

    def __init__(
        self,
        node: ProxyNode,
        *,
        xds_address: tuple[str, int],
        work_dir: Path,
        admin_port: int = 0,
        delta: bool = True,
        log_level: str | None = None,
        on_line: LineSink | None = None,
        options: EnvoyOptions | None = None,
        restart_policy: RestartPolicy | None = None,
        name: str | None = None,
        process_factory: Callable[[], SupervisedEnvoy] | None = None,
    ) -> None:
        self.node = node
        self.name = name or node.id
        self.ready = asyncio.Event()
        self.restarts = 0
        self.bootstrap: dict[str, Any] = build_bootstrap(
            node, xds_address=xds_address, admin_port=admin_port, delta=delta
        )
        options = options or EnvoyOptions()
        if log_level is not None:
            options = dataclasses.replace(options, log_level=log_level)
        self._options = options
        self._work_dir = work_dir
        self._on_output = on_line
        self._new_process = process_factory or self._new_envoy_process
        self._run_task: asyncio.Task[None] | None = None
        self._policy = restart_policy or RestartPolicy()
        self._process: SupervisedEnvoy | None = None
        self._stopping = asyncio.Event()
        self._run_finished = asyncio.Event()
        self._run_finished.set()

    @property
    def admin_url(self) -> str | None:
        """The running Envoy's admin API (changes on restart only if the admin port is 0)."""
        return self._process.admin_url if self._process else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.running else None

    async def start(self) -> None:
        """Run the supervision loop in the background; return once Envoy is ready.

        Raises ``EnvoyStartError`` (and supervises nothing) if the first start fails.
        """
        if self._run_task is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._run_task = asyncio.create_task(self.run(), name=f"sidecar {self.name}")
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait({self._run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._run_task.cancel()
            await asyncio.wait({self._run_task})
            raise
        finally:
            ready.cancel()
        if self._run_task.done():
            self._run_task.result()  # raises the start error, if there was one

    async def run(self) -> None:
        self._run_finished.clear()
        try:
            await self._keep_envoy_running()
        finally:
            # Reached with a live Envoy only when run() itself is cancelled.
            if self._process is not None and self._process.running:
                await self._process.stop()
            self.ready.clear()
            self._run_finished.set()

    async def _keep_envoy_running(self) -> None:
        failures = 0
        ever_started = False
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            process = self._new_process()
            self._process = process
            try:
                await process.start()
            except EnvoyStartError as exc:
                if self._stopping.is_set():
                    return
                if not ever_started:
                    raise
                failures += 1
                log.warning("%s could not be restarted: %s", self.name, exc)
                await self._pause(self._policy.delay(failures))
                continue
            if self._stopping.is_set():
                # shutdown() came while the process was still being spawned.
                await process.stop()
                return
            ever_started = True
            started_at = loop.time()
            self.ready.set()
            log.info("%s ready (pid %s, admin %s)", self.name, process.pid, process.admin_url)
            code = await process.wait()
            self.ready.clear()
            if self._stopping.is_set():
                return
            failures = self._policy.failures_after_exit(failures, loop.time() - started_at)
            delay = self._policy.delay(failures)
            self.restarts += 1
            log.warning(
                "%s (pid %s) exited unexpectedly with %s; restarting in %.1fs. Last lines:\n%s",
                self.name,
                process.pid,
                describe_exit(code),
                delay,
                "\n".join(process.recent_output) or "(no output)",
            )
            await self._pause(delay)

    async def shutdown(self, drain_seconds: float) -> None:
        """Drain Envoy's listeners for up to ``drain_seconds``, then stop it; ``run()`` returns."""
        self._stopping.set()
        self.ready.clear()
        if self._process is not None:
            code = await self._process.drain(drain_seconds)
            log.info("%s stopped (%s)", self.name, describe_exit(code))
        # run() may be between spawning a process and noticing the shutdown; when this
        # returns, no Envoy of ours is left.
        await self._run_finished.wait()
        if self._run_task is not None and self._run_task.done() and not self._run_task.cancelled():
            self._run_task.exception()  # retrieved here so asyncio does not warn it was lost

    def _new_envoy_process(self) -> SupervisedEnvoy:
        return EnvoyProcess(
            self.bootstrap,
            work_dir=self._work_dir,
            name=self.name,
            options=self._options,
            on_output=self._on_output,
        )

    async def _pause(self, seconds: float) -> None:
        # Sleeps, but wakes at once when shutdown() is called.
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
