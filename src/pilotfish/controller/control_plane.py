"""The control plane as a running service: config watcher, xDS server and admin API together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pilotfish.ca.store import ca_directory, load_or_create_ca
from pilotfish.controller.access_log_service import (
    AccessLogService,
    NodeDirectoryFeed,
    access_log_method_handlers,
)
from pilotfish.controller.ca_service import ca_method_handlers
from pilotfish.controller.certificates import MeshCertificateAuthority, utc_now
from pilotfish.controller.config_watch import config_fingerprint, watch_config_dir
from pilotfish.controller.control_plane_metrics import (
    XdsMetrics,
    control_plane_families,
    live_view_families,
)
from pilotfish.controller.mesh_controller import MeshController
from pilotfish.controller.preflight import preflight
from pilotfish.controller.rate_limit_service import RateLimitService, rate_limit_method_handlers
from pilotfish.controller.trace_export import TraceExport
from pilotfish.discovery import Registry, registry_services
from pilotfish.load import LoadResult, ParseCache, load_directory
from pilotfish.model.diagnostics import ConfigError, Diagnostic, Severity
from pilotfish.model.identity import Identity
from pilotfish.model.keepalive import XdsKeepalive
from pilotfish.model.resources import MeshConfig, MeshSettings
from pilotfish.model.telemetry import TraceExporter
from pilotfish.telemetry.hub import TelemetryHub
from pilotfish.telemetry.istio_metrics import IstioMetrics
from pilotfish.telemetry.live import LiveWindows
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.prometheus import MetricFamily
from pilotfish.telemetry.tap import ProxyLogs, TapFeed
from pilotfish.telemetry.traces import TraceStore
from pilotfish.xds.server import start_xds_server
from pilotfish.xds.status_board import ProxyStatusBoard

log = logging.getLogger("pilotfish.controller")


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Where the control plane listens. Port 0 asks the OS for a free port."""

    host: str = "127.0.0.1"
    xds_port: int = 0
    also_on: tuple[str, ...] = ()
    """More addresses the xDS port is bound on (same port): the root end of the network
    namespaces' veth, for Envoys under transparent interception."""
    debounce_seconds: float = 0.02
    watch_interval_seconds: float = 0.2
    keepalive: XdsKeepalive = field(default_factory=XdsKeepalive)
    """Must match the proxies' bootstraps (the agent's default is the same)."""
    ca_tick_seconds: float = 60.0
    """How often the CA looks at the clock: ends rotations, starts automatic ones, warns."""


def load_and_check(
    config_dir: Path, registries: Sequence[Registry] = (), cache: ParseCache | None = None
) -> LoadResult:
    """Load a folder, then translate it for stand-in proxies; any error rejects it whole.

    Routes may name services that only ``registries`` know; ``cache`` keeps parsed files.
    """
    result = load_directory(config_dir, cache, known_services=registry_services(registries))
    if result.config is None:
        return result
    problems = preflight(result.config, config_dir, registries)
    if problems:
        return LoadResult(config=None, diagnostics=result.diagnostics + problems)
    return result


def mesh_settings_changes(
    running: MeshSettings, loaded: LoadResult, config_dir: Path
) -> LoadResult:
    """``loaded`` with what the CA cannot take while it runs: another trust domain is an
    error (every certificate in the mesh names the running one, so the edit would cut every
    mTLS call); other certificate settings are a warning (they apply after a restart)."""
    if loaded.config is None:
        return loaded
    wanted = loaded.config.mesh

    def located(path: str, message: str, severity: Severity) -> Diagnostic:
        if wanted.meta is not None:
            return wanted.meta.source.diagnostic(path, message, severity)
        return Diagnostic(str(config_dir), 1, 1, "", f"MeshConfig removed: {message}", severity)

    found: list[Diagnostic] = []
    if wanted.trust_domain != running.trust_domain:
        found.append(
            located(
                "spec.trustDomain",
                f'the mesh runs with trust domain "{running.trust_domain}" and every workload '
                f'certificate names it: restart the mesh to use "{wanted.trust_domain}"',
                "error",
            )
        )
    elif wanted.certificates != running.certificates:
        found.append(
            located(
                "spec.certificates",
                "the CA keeps the certificate settings it started with: these apply after a "
                "restart of the control plane",
                "warning",
            )
        )
    if not found:
        return loaded
    diagnostics = loaded.diagnostics + tuple(found)
    failed = any(d.severity == "error" for d in found)
    return LoadResult(None if failed else loaded.config, diagnostics)


class ControlPlane:
    def __init__(
        self,
        config_dir: Path,
        settings: ControlPlaneSettings | None = None,
        registries: Sequence[Registry] = (),
    ) -> None:
        self.config_dir = config_dir
        self.settings = settings or ControlPlaneSettings()
        self.registries = tuple(registries)
        self.controller = MeshController(
            self.registries, debounce_seconds=self.settings.debounce_seconds
        )
        self.board = ProxyStatusBoard()
        self.xds_port = 0
        self._server: grpc.aio.Server | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._ca_task: asyncio.Task[None] | None = None
        self.certificates: MeshCertificateAuthority | None = None
        """The mesh's CA, from ``start`` on."""
        self._fingerprint = ""
        self._parsed = ParseCache()  # this control plane's own: reloads re-parse changed files
        self.telemetry = TelemetryHub()
        """Every proxy's request records arrive here (the access-log service) and go to the
        views registered as its sinks."""
        self.nodes = NodeDirectory()
        """Every proxy seen on an xDS stream (and those gone a few minutes ago), by node id
        and inbound address."""
        self.istio_metrics = IstioMetrics()
        self.telemetry.add_sink(self.istio_metrics)
        self.access_logs = AccessLogService(self.telemetry, self.nodes)
        self.xds_metrics = XdsMetrics(self.controller.published_at)
        self.live = LiveWindows()
        self.tap = TapFeed()
        self.proxy_logs = ProxyLogs()
        for sink in (self.live, self.proxy_logs, self.tap):
            self.telemetry.add_sink(sink)
        self.traces = TraceStore()
        """Recent traces, from the spans the proxies post to the admin API."""
        self.trace_export = TraceExport(self._trace_exporters)
        """Those spans, forwarded to the collectors the running MeshConfig names."""
        self.rate_limits = RateLimitService(self._served_config)
        """The global rate limits' decisions, against the config the proxies were sent."""

    def _served_config(self) -> MeshConfig | None:
        view = self.controller.view
        return view.config if view is not None else None

    def _trace_exporters(self) -> tuple[TraceExporter, ...]:
        config = self.controller.config
        return config.mesh.telemetry.trace_exporters if config is not None else ()

    async def load_initial_config(self) -> LoadResult:
        """Load the folder once; refuse to start on errors rather than serve a partial mesh."""
        # Fingerprint first: an edit made while loading is then seen as a change, not lost.
        self._fingerprint = await asyncio.to_thread(config_fingerprint, self.config_dir)
        result = await asyncio.to_thread(
            load_and_check, self.config_dir, self.registries, self._parsed
        )
        if result.config is None:
            raise ConfigError(result.diagnostics)
        self.controller.apply_config(result.config, result.diagnostics)
        self.controller.publish_now()
        return result

    def ca_credential(self, identity: Identity) -> str:
        """The bearer token an agent presents to get certificates for ``identity`` only."""
        if self.certificates is None:
            raise RuntimeError("the control plane has not started: it has no CA yet")
        return self.certificates.credential(identity)

    async def start(self) -> None:
        if self.controller.config is None:
            await self.load_initial_config()
        assert self.controller.config is not None
        # The settings of the folder as loaded at start; a later edit of them needs a restart.
        mesh = self.controller.config.mesh
        stored = await asyncio.to_thread(
            load_or_create_ca,
            ca_directory(self.config_dir),
            mesh.certificates,
            mesh.trust_domain,
            utc_now(),
        )
        self.certificates = MeshCertificateAuthority(stored, mesh)
        self.certificates.tick()  # warns at once of a root close to expiry
        self.trace_export.start()
        self._server, self.xds_port = await start_xds_server(
            self.controller,
            [self.board, NodeDirectoryFeed(self.nodes), self.xds_metrics],
            host=self.settings.host,
            port=self.settings.xds_port,
            keepalive=self.settings.keepalive,
            also_on=self.settings.also_on,
            extra_handlers=(
                *ca_method_handlers(self.certificates),
                *access_log_method_handlers(self.access_logs),
                *rate_limit_method_handlers(self.rate_limits),
            ),
        )
        log.info(
            "xDS server listening on %s:%d (the CA, access-log and rate limit services too)",
            " and ".join((self.settings.host, *self.settings.also_on)),
            self.xds_port,
        )
        self._watch_task = asyncio.create_task(self._watch_config())
        self._ca_task = asyncio.create_task(self._tick_ca(self.certificates))

    def metric_families(self) -> list[MetricFamily]:
        """Everything ``/metrics`` shows: the control plane's own metrics, then Istio's."""
        return [
            *self.xds_metrics.families(),
            *control_plane_families(
                self.controller, self.certificates, self.telemetry, self.access_logs
            ),
            *live_view_families(self.live, self.tap, self.proxy_logs),
            *self.rate_limits.families(),
            *self.istio_metrics.families(),
        ]

    async def _tick_ca(self, certificates: MeshCertificateAuthority) -> None:
        while True:
            await asyncio.sleep(self.settings.ca_tick_seconds)
            try:
                certificates.tick()
            except Exception:  # a failed rotation must not stop the next look at the clock
                log.exception("the CA's periodic check failed")

    async def _watch_config(self) -> None:
        changes = watch_config_dir(
            self.config_dir, self.settings.watch_interval_seconds, last=self._fingerprint
        )
        async for self._fingerprint in changes:
            try:
                result = await asyncio.to_thread(
                    load_and_check, self.config_dir, self.registries, self._parsed
                )
            except Exception as exc:  # a loader bug must not stop every later reload
                log.exception("could not load %s", self.config_dir)
                message = f"internal error while loading: {exc!r}; please report it"
                result = LoadResult(None, (Diagnostic(str(self.config_dir), 1, 1, "", message),))
            if self.certificates is not None:
                result = mesh_settings_changes(self.certificates.mesh, result, self.config_dir)
            if self.controller.apply_config(result.config, result.diagnostics):
                log.info("config change in %s applied", self.config_dir)

    async def wait_until_pushed(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until pending changes are published and every
        connected proxy has taken the resulting generation and answered (ACK or NACK) every
        response it was sent. True if that happened, False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.controller.publish_pending:
            seen = self.controller.generation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.controller.wait_for_change(seen), timeout)
        # The streams take the generation in their own tasks, each in its own time: the board
        # hears of every one and of every answer, and wakes this wait when they are all in.
        return await self.board.wait_until_answered(
            self.controller.generation, max(0.0, deadline - loop.time())
        )

    async def stop(self, grace_seconds: float = 1.0) -> None:
        for task in (self._watch_task, self._ca_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            if self._server is not None:
                await self._server.stop(grace_seconds)
        finally:
            await self.trace_export.stop()  # its HTTP session must not outlive us
            await self.rate_limits.close()  # and neither must its Redis connections
        if self.certificates is not None:
            # Nothing is signed any more: the next start can trust these records whole.
            await asyncio.to_thread(self.certificates.save, True)
        self.controller.close()
