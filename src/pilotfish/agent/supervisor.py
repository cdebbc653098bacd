"""Keep a process running: restart it with backoff when it dies, stop it on request.

``Supervisor`` is the loop, for any process (the runner's workload replicas use it too);
``Sidecar`` is that loop around one Envoy, with its bootstrap and drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pilotfish.agent.bootstrap import ADMIN_HOST, build_bootstrap
from pilotfish.agent.child_process import LineSink, ProcessStartError, describe_exit
from pilotfish.agent.envoy_process import EnvoyOptions, EnvoyProcess
from pilotfish.agent.sds_server import SdsServer, start_sds_server
from pilotfish.agent.workload_certificate import WorkloadCertificates
from pilotfish.model.keepalive import XdsKeepalive
from pilotfish.model.proxy import ProxyNode

log = logging.getLogger(__name__)

# One JSON object a line (envoy.data.cluster.v3.OutlierDetectionEvent), appended by Envoy.
OUTLIER_LOG_NAME = "outlier-events.log"


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


class Supervised(Protocol):
    """One lifetime of a supervised process (``ChildProcess``, ``EnvoyProcess``)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def recent_output(self) -> tuple[str, ...]: ...
    async def start(self) -> None: ...
    async def wait(self) -> int: ...
    async def stop(self) -> int | None: ...


P = TypeVar("P", bound=Supervised)


class Supervisor(Generic[P]):
    """Runs a new process from ``new_process`` whenever the last one exits, until ``stop()``.

    ``start()`` (or ``run()`` in a task of your own) raises ``ProcessStartError`` if the very
    first start fails: a bad command line does not heal by retrying. After that, exits and
    failed restarts are retried with the policy's backoff.

    After each start, ``on_started`` runs (e.g. waiting until the process serves, then
    announcing it), then ``ready`` is set; it is abandoned if ``stop`` is asked meanwhile.
    ``on_exit`` is told at once of every exit that was not asked for, before the backoff.
    """

    def __init__(
        self,
        name: str,
        new_process: Callable[[], P],
        *,
        policy: RestartPolicy | None = None,
        on_started: Callable[[P], Awaitable[None]] | None = None,
        on_exit: Callable[[P, int], None] | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.ready = asyncio.Event()
        self.restarts = 0
        self.process: P | None = None
        """The current (or last) process; None before the first start."""
        self._new_process = new_process
        self._policy = policy or RestartPolicy()
        self._on_started = on_started
        self._on_exit = on_exit
        self._log = logger
        self._run_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._run_finished = asyncio.Event()
        self._run_finished.set()

    async def start(self) -> None:
        """Run the loop in the background; return once the first process is ready.

        Raises ``ProcessStartError`` (and supervises nothing) if the first start fails.
        """
        if self._run_task is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._run_task = asyncio.create_task(self.run(), name=f"supervise {self.name}")
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
            await self._keep_running()
        finally:
            # Reached with a live process only when run() itself is cancelled.
            if self.process is not None and self.process.running:
                await self.process.stop()
            self.ready.clear()
            self._run_finished.set()

    def stop_restarting(self) -> None:
        """From now on an exit is final; the current process keeps running until ``stop()``."""
        self._stopping.set()
        self.ready.clear()

    async def stop(self) -> int | None:
        """Stop restarting, stop the current process; return once nothing of ours runs."""
        self.stop_restarting()
        code = await self.process.stop() if self.process is not None else None
        # run() may be between spawning a process and noticing the stop; when this returns,
        # no process of ours is left.
        await self._run_finished.wait()
        if self._run_task is not None and self._run_task.done() and not self._run_task.cancelled():
            self._run_task.exception()  # retrieved here so asyncio does not warn it was lost
        return code

    async def _keep_running(self) -> None:
        failures = 0
        ever_started = False
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            process = self._new_process()
            self.process = process
            try:
                await process.start()
            except ProcessStartError as exc:
                if self._stopping.is_set():
                    return
                if not ever_started:
                    raise
                failures += 1
                self._log.warning("%s could not be restarted: %s", self.name, exc)
                await self._unless_stopping(asyncio.sleep(self._policy.delay(failures)))
                continue
            if self._stopping.is_set():
                # stop() came while the process was still being spawned.
                await process.stop()
                return
            ever_started = True
            started_at = loop.time()
            if self._on_started is not None:
                try:
                    await self._unless_stopping(self._on_started(process))
                except Exception:  # a broken hook must not end the supervision
                    self._log.exception("%s: after-start hook failed", self.name)
                if self._stopping.is_set():
                    return
            self.ready.set()
            code = await process.wait()
            self.ready.clear()
            if self._stopping.is_set():
                return
            if self._on_exit is not None:
                self._on_exit(process, code)
            failures = self._policy.failures_after_exit(failures, loop.time() - started_at)
            delay = self._policy.delay(failures)
            self.restarts += 1
            self._log.warning(
                "%s (pid %s) exited unexpectedly with %s; restarting in %.1fs. Last lines:\n%s",
                self.name,
                process.pid,
                describe_exit(code),
                delay,
                "\n".join(process.recent_output) or "(no output)",
            )
            await self._unless_stopping(asyncio.sleep(delay))

    async def _unless_stopping(self, work: Awaitable[None]) -> None:
        # Runs ``work``, but abandons it at once when stop is asked.
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled():
            task.result()


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

    With ``certificates``, the sidecar holds the workload's identity: they are kept fresh
    and served over SDS on ``sds_socket`` (in ``work_dir``) from before Envoy's first start
    until shutdown, so a restarted Envoy reconnects to the same socket.

    With ``telemetry_address`` (the control plane's admin port), Envoy sends its spans there.

    With ``owner_uid`` (Envoy runs as that user, see ``EnvoyOptions.command_prefix``), the
    work directory and the SDS socket are handed to it, so Envoy can read its bootstrap, write
    its logs and reach its secrets; ``admin_host`` is where its admin interface listens.

    Envoy appends each outlier ejection to ``OUTLIER_LOG_NAME`` in ``work_dir`` (unless the
    node names another file), emptied before each Envoy starts; the node's metadata names it,
    so the control plane can say when and why an endpoint was ejected.
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
        keepalive: XdsKeepalive | None = None,
        certificates: WorkloadCertificates | None = None,
        telemetry_address: tuple[str, int] | None = None,
        admin_host: str = ADMIN_HOST,
        owner_uid: int | None = None,
    ) -> None:
        if node.outlier_log is None:
            log_path = (work_dir / OUTLIER_LOG_NAME).resolve()
            node = dataclasses.replace(node, outlier_log=str(log_path))
        self.node = node
        self.name = name or node.id
        self.certificates = certificates
        self.sds_socket = work_dir / "sds" / "socket" if certificates is not None else None
        self.bootstrap: dict[str, Any] = build_bootstrap(
            node,
            xds_address=xds_address,
            admin_port=admin_port,
            delta=delta,
            keepalive=keepalive,
            sds_socket=self.sds_socket,
            telemetry_address=telemetry_address,
            admin_host=admin_host,
        )
        self._owner_uid = owner_uid
        options = options or EnvoyOptions()
        if log_level is not None:
            options = dataclasses.replace(options, log_level=log_level)
        self._options = options
        self._work_dir = work_dir
        self._make_process = process_factory or self._new_envoy_process
        self._on_output = on_line
        self._supervisor: Supervisor[SupervisedEnvoy] = Supervisor(
            self.name,
            self._next_process,
            policy=restart_policy,
            on_started=self._announce,
        )
        self.ready = self._supervisor.ready
        self._sds: SdsServer | None = None
        self._renewing: asyncio.Task[None] | None = None

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts

    @property
    def admin_url(self) -> str | None:
        """The running Envoy's admin API (changes on restart only if the admin port is 0)."""
        process = self._supervisor.process
        return process.admin_url if process else None

    @property
    def sds_server(self) -> SdsServer | None:
        """The SDS server while the sidecar runs with ``certificates``."""
        return self._sds

    @property
    def pid(self) -> int | None:
        process = self._supervisor.process
        return process.pid if process and process.running else None

    async def start(self) -> None:
        """Run the supervision loop in the background; return once Envoy is ready.

        Raises ``EnvoyStartError`` (and supervises nothing) if the first start fails.
        """
        await self._start_identity()
        try:
            await self._supervisor.start()
        except BaseException:
            await self._stop_identity()
            raise

    async def run(self) -> None:
        await self._start_identity()
        try:
            await self._supervisor.run()
        finally:
            await self._stop_identity()

    async def shutdown(self, drain_seconds: float) -> None:
        """Drain Envoy's listeners for up to ``drain_seconds``, then stop it; ``run()`` returns."""
        self._supervisor.stop_restarting()
        process = self._supervisor.process
        if process is not None:
            code = await process.drain(drain_seconds)
            log.info("%s stopped (%s)", self.name, describe_exit(code))
        await self._supervisor.stop()
        await self._stop_identity()

    async def _start_identity(self) -> None:
        if self.certificates is None or self._sds is not None:
            self._hand_over_files()
            return
        assert self.sds_socket is not None
        self._sds = await start_sds_server(self.certificates, self.sds_socket)
        self._hand_over_files()
        self._renewing = asyncio.create_task(
            self.certificates.run(), name=f"certificates of {self.name}"
        )

    async def _stop_identity(self) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        sds, self._sds = self._sds, None
        if sds is not None:
            await sds.stop()

    def _hand_over_files(self) -> None:
        if self._owner_uid is None:
            return
        self._work_dir.mkdir(parents=True, exist_ok=True)
        for path in (self._work_dir, *self._work_dir.rglob("*")):
            os.chown(path, self._owner_uid, self._owner_uid)

    def _next_process(self) -> SupervisedEnvoy:
        # A new Envoy holds no ejections: the last one's events would describe hosts it no
        # longer sees that way, and kept across restarts the log would grow without bound.
        _empty(self.node.outlier_log)
        return self._make_process()

    def _new_envoy_process(self) -> SupervisedEnvoy:
        return EnvoyProcess(
            self.bootstrap,
            work_dir=self._work_dir,
            name=self.name,
            options=self._options,
            on_output=self._on_output,
        )

    async def _announce(self, process: SupervisedEnvoy) -> None:
        log.info("%s ready (pid %s, admin %s)", self.name, process.pid, process.admin_url)


def _empty(path: str | None) -> None:
    if path is None:
        return
    try:
        os.truncate(path, 0)
    except FileNotFoundError:
        pass  # Envoy creates it at its first ejection
    except OSError as exc:
        log.warning("outlier event log %s not emptied (%s): it keeps growing", path, exc.strerror)
