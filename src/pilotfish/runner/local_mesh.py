"""`pilotfish up`: the control plane, an ingress gateway, and each Workload replica with a sidecar.

Order matters for "no failed requests": a replica is added to its service's endpoints only once
its app accepts connections and its sidecar is ready, and removed (and pushed) before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pilotfish.agent.bootstrap import ADMIN_HOST
from pilotfish.agent.ca_client import GrpcCertificateSigner
from pilotfish.agent.child_process import ChildProcess
from pilotfish.agent.envoy_process import EnvoyOptions
from pilotfish.agent.ports import PortPicker, wait_for_port
from pilotfish.agent.supervisor import Sidecar, Supervisor
from pilotfish.agent.workload_certificate import WorkloadCertificates
from pilotfish.controller.control_plane import ControlPlane, ControlPlaneSettings
from pilotfish.discovery import InMemoryRegistry
from pilotfish.errors import PilotfishError
from pilotfish.model.identity import GATEWAY_SERVICE_ACCOUNT
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshSettings
from pilotfish.model.service_addresses import service_addresses
from pilotfish.model.services import Endpoint
from pilotfish.runner.netns import NetworkNamespaces, wait_for_port_in, write_hosts_file
from pilotfish.runner.netns_plan import (
    ENVOY_ADMIN_PORT,
    ENVOY_UID,
    INBOUND_CAPTURE_PORT,
    OUTBOUND_CAPTURE_PORT,
    ReplicaNetwork,
    hosts_file,
    transparent_environment,
)
from pilotfish.runner.output import prefixed_printer
from pilotfish.runner.plan import (
    ReplicaPorts,
    ReplicaSpec,
    plan_replicas,
    replica_environment,
    replica_upstreams,
)
from pilotfish.runner.port_holder import port_taken

log = logging.getLogger("pilotfish.runner")

GATEWAY_LABELS = {"istio": "ingressgateway", "app": "pilotfish-ingressgateway"}


@dataclass(frozen=True)
class LocalMeshSettings:
    xds_port: int = 0
    delta: bool = True
    app_start_timeout: float = 30.0
    drain_seconds: float = 1.0
    envoy_log_level: str = "warning"
    telemetry_port: int | None = None
    """The admin server's port on 127.0.0.1: every proxy sends its spans there. None: the
    proxies trace nothing (their access logs still stream to the control plane)."""


@dataclass
class _RunningReplica:
    spec: ReplicaSpec
    ports: ReplicaPorts
    sidecar: Sidecar
    sidecar_started: asyncio.Future[None]
    app: Supervisor[ChildProcess]
    """Restarts the app when it exits on its own, as a Kubernetes kubelet would."""
    network: ReplicaNetwork | None = None
    """Its network namespace, under transparent interception."""


class LocalMesh:
    def __init__(self, config_dir: Path, settings: LocalMeshSettings | None = None) -> None:
        self.config_dir = config_dir.resolve()
        self.settings = settings or LocalMeshSettings()
        # The replicas this runner starts, as endpoints of their Workloads' services.
        self.replica_registry = InMemoryRegistry()
        self.control_plane = ControlPlane(
            self.config_dir,
            ControlPlaneSettings(xds_port=self.settings.xds_port),
            registries=(self.replica_registry,),
        )
        self.replicas: dict[str, _RunningReplica] = {}
        self.gateway: Sidecar | None = None
        self._work_dir = Path(tempfile.mkdtemp(prefix="pilotfish-up-"))
        self._reconcile_lock = asyncio.Lock()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._signers: dict[str, GrpcCertificateSigner] = {}
        # Every port this mesh chooses (sidecars' admin, apps, listeners) is one it has not
        # chosen before: two of them are not bound until their processes start.
        self._ports = PortPicker()
        self.network: NetworkNamespaces | None = None
        """The replicas' network namespaces, under transparent interception."""

    @property
    def xds_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.control_plane.xds_port)

    @property
    def telemetry_address(self) -> tuple[str, int] | None:
        port = self.settings.telemetry_port
        return ("127.0.0.1", port) if port is not None else None

    async def prepare(self) -> tuple[str, ...]:
        """Load the config; under transparent interception make the replicas' network.

        Returns the addresses the control plane's servers must also listen on (the admin
        server's too, where proxies send their spans). Raises ``InterceptionError`` when
        transparent interception cannot run here (not root, tools missing).
        """
        if self.control_plane.controller.config is None:
            await self.control_plane.load_initial_config()
        config = self.control_plane.controller.config
        if self.network is not None or config is None or config.mesh.interception != "transparent":
            return self.control_plane.settings.also_on
        self.network = await asyncio.to_thread(NetworkNamespaces.open)
        # Envoy runs as another user: it must be able to reach its own files below.
        self._work_dir.chmod(0o711)
        also_on = (self.network.host.host_address,)
        self.control_plane.settings = dataclasses.replace(
            self.control_plane.settings, also_on=also_on
        )
        return also_on

    async def start(self) -> None:
        try:
            await self.prepare()
            await self.control_plane.start()
        except BaseException:
            await self._close_network()
            raise
        # Taken before the first reconcile: an edit made while it starts the replicas (a user
        # fixing the command of an app that crashed at once) must not be missed.
        seen = self.control_plane.controller.generation
        await self.reconcile()
        self._reconcile_task = asyncio.create_task(self._reconcile_on_changes(seen))

    async def _reconcile_gateway(self, wanted: bool) -> None:
        if wanted and self.gateway is None:
            node = ProxyNode(
                id="ingressgateway",
                kind="gateway",
                labels=GATEWAY_LABELS,
                service_account=GATEWAY_SERVICE_ACCOUNT,
                workload=GATEWAY_LABELS["app"],
            )
            self.gateway = self._sidecar(node, "ingressgateway")
            await self.gateway.start()
        elif not wanted and self.gateway is not None:
            gateway, self.gateway = self.gateway, None
            await self._retire(gateway, self.settings.drain_seconds)

    def _sidecar(
        self, node: ProxyNode, name: str, network: ReplicaNetwork | None = None
    ) -> Sidecar:
        config = self.control_plane.controller.config
        mesh = config.mesh if config is not None else MeshSettings()
        identity = node.identity(mesh.trust_domain)
        # Each proxy proves its own identity and no other: the credential is bound to it.
        signer = GrpcCertificateSigner(
            "{}:{}".format(*self.xds_address),
            self.control_plane.ca_credential(identity),
            node_id=node.id,
        )
        self._signers[node.id] = signer
        xds_address, telemetry_address = self.xds_address, self.telemetry_address
        admin_port, admin_host, owner_uid, options = self._ports.pick(), ADMIN_HOST, None, None
        if network is not None:
            # In its replica's namespace, as the uid iptables lets through, it finds the
            # control plane at the root end of the veth.
            assert self.network is not None
            host = self.network.host.host_address
            xds_address = (host, self.control_plane.xds_port)
            if telemetry_address is not None:
                telemetry_address = (host, telemetry_address[1])
            admin_port, admin_host, owner_uid = ENVOY_ADMIN_PORT, network.address, ENVOY_UID
            options = EnvoyOptions(command_prefix=network.as_sidecar(()))
        return Sidecar(
            node,
            xds_address=xds_address,
            admin_port=admin_port,
            admin_host=admin_host,
            owner_uid=owner_uid,
            options=options,
            work_dir=self._work_dir / name,
            delta=self.settings.delta,
            log_level=self.settings.envoy_log_level,
            on_line=prefixed_printer(f"{name} envoy"),
            # The policy the xDS server was started with: both ends must agree on it.
            keepalive=self.control_plane.settings.keepalive,
            certificates=WorkloadCertificates(identity, signer, mesh.certificates.workload_ttl),
            telemetry_address=telemetry_address,
        )

    async def _retire(self, sidecar: Sidecar, drain_seconds: float) -> None:
        """Drain and stop a sidecar, then let go of its line to the CA."""
        await sidecar.shutdown(drain_seconds)
        signer = self._signers.pop(sidecar.name, None)
        if signer is not None:
            await signer.close()

    async def _reconcile_on_changes(self, seen: int) -> None:
        controller = self.control_plane.controller
        while True:
            seen = await controller.wait_for_change(seen)
            try:
                await self.reconcile()
            except Exception:
                log.exception("could not bring the running replicas in line with the config")

    async def reconcile(self) -> None:
        """Start what the config asks for and is not running; stop what it no longer asks for.

        A replica whose spec changed is replaced one at a time, so a service with several
        replicas keeps serving throughout (a single replica is briefly down: same name, same
        sidecar identity, so old and new cannot overlap).
        """
        async with self._reconcile_lock:
            # Read under the lock: a reconcile that waited for another one acts on the newest.
            config = self.control_plane.controller.config
            if config is None:
                return
            self._write_hosts_files()
            await self._reconcile_gateway(bool(config.gateways))
            wanted = plan_replicas(config)
            removed = [name for name in self.replicas if name not in wanted]
            await asyncio.gather(*(self._stop_replica(name) for name in removed))
            missing = [spec for name, spec in wanted.items() if name not in self.replicas]
            await asyncio.gather(*(self._start_replica(spec) for spec in missing))
            for name, spec in wanted.items():
                if self.control_plane.controller.config is not config:
                    # Edited while a replacement waited for its app (up to the listen wait
                    # each): the next reconcile follows the newest config, so a fix made
                    # during a rollout of a broken command is not rolled out behind it.
                    return
                running = self.replicas.get(name)
                if running is not None and running.spec != spec:
                    await self._stop_replica(name)
                    await self._start_replica(spec)

    def _write_hosts_files(self) -> None:
        """Each namespace's /etc/hosts names every service's address (and they change)."""
        view = self.control_plane.controller.view
        if self.network is None or view is None:
            return
        addresses = service_addresses(view)
        for running in self.replicas.values():
            if running.network is not None:
                text = hosts_file(running.spec.namespace, view.services, addresses)
                write_hosts_file(running.network.namespace, text)

    async def _start_replica(self, spec: ReplicaSpec) -> None:
        if self.network is not None:
            await self._start_intercepted_replica(spec, self.network)
            return
        pick = self._ports.pick
        ports = ReplicaPorts(app=pick(), inbound=pick(), outbound=pick())
        upstreams = replica_upstreams(spec, pick)
        for upstream in upstreams:
            # Else its sidecar's listener fails to bind (a NACK), and the app, told that port,
            # would talk to whatever holds it.
            taken = await asyncio.to_thread(port_taken, upstream.proxy.local_port)
            if taken is not None:
                log.error(
                    "%s is not started: Workload %s/%s's upstream %s:%d wants localPort %d, "
                    "which is taken (%s); free the port or choose another localPort "
                    "(it is tried again at the next config change)",
                    spec.name,
                    spec.namespace,
                    spec.workload,
                    upstream.proxy.hostname,
                    upstream.proxy.port,
                    upstream.proxy.local_port,
                    taken,
                )
                return
        node = replace(
            _replica_node(spec, ports), upstreams=tuple(upstream.proxy for upstream in upstreams)
        )
        sidecar = self._sidecar(node, spec.name)
        environment = replica_environment(spec, ports, os.environ)
        environment.update({u.environment_name: u.address for u in upstreams})
        await self._run_replica(spec, ports, sidecar, environment, None)

    async def _start_intercepted_replica(
        self, spec: ReplicaSpec, network: NetworkNamespaces
    ) -> None:
        """The replica in a network namespace of its own, where its app listens on its
        Workload port and iptables takes every TCP connection to its sidecar."""
        replica = await asyncio.to_thread(network.add_replica, spec.port)
        ports = ReplicaPorts(
            app=spec.port, inbound=INBOUND_CAPTURE_PORT, outbound=OUTBOUND_CAPTURE_PORT
        )
        node = replace(
            _replica_node(spec, ports), bind_address=replica.address, interception="transparent"
        )
        try:
            sidecar = self._sidecar(node, spec.name, replica)
            environment = transparent_environment(replica_environment(spec, ports, os.environ))
            view = self.control_plane.controller.view
            if view is not None:
                addresses = service_addresses(view)
                text = hosts_file(spec.namespace, view.services, addresses)
                await asyncio.to_thread(write_hosts_file, replica.namespace, text)
                # No local ports are needed: the service's own address is intercepted.
                for upstream in replica_upstreams(spec, self._ports.pick):
                    found = addresses.get(upstream.proxy.hostname)
                    if found is not None and found.address is not None:
                        where = f"{found.address}:{upstream.proxy.port}"
                        environment[upstream.environment_name] = where
        except BaseException:
            await asyncio.to_thread(network.remove_replica, replica)
            raise
        await self._run_replica(spec, ports, sidecar, environment, replica)

    async def _run_replica(
        self,
        spec: ReplicaSpec,
        ports: ReplicaPorts,
        sidecar: Sidecar,
        environment: dict[str, str],
        network: ReplicaNetwork | None,
    ) -> None:
        command = network.in_namespace(spec.command) if network is not None else spec.command

        def new_app_process() -> ChildProcess:
            return ChildProcess(
                command,
                name=spec.name,
                cwd=spec.directory,
                env=environment,
                on_line=prefixed_printer(spec.name),
            )

        running = _RunningReplica(
            spec,
            ports,
            sidecar,
            asyncio.ensure_future(sidecar.start()),
            Supervisor(
                spec.name,
                new_app_process,
                on_started=lambda app: self._register_when_serving(running, app),
                on_exit=lambda _, code: self._withdraw(running),
                logger=log,
            ),
            network,
        )
        self.replicas[spec.name] = running
        # Both starts run to their end before we look, so a failed one never leaves the other
        # half still starting behind our back. The app's start includes its registration.
        outcomes = await asyncio.gather(
            running.sidecar_started, running.app.start(), return_exceptions=True
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            for failure in failures:
                log.error("%s could not start; it is left out of the mesh: %s", spec.name, failure)
            self.replicas.pop(spec.name, None)
            await _shielded(self._shut_down(running, 0))
            if any(not isinstance(f, PilotfishError) for f in failures):
                raise failures[0]

    async def _register_when_serving(self, running: _RunningReplica, app: ChildProcess) -> None:
        """Add the replica to its service once its app listens and its sidecar is ready and
        holds its certificate (Envoy reports ready without one once SDS's initial fetch times
        out, and its inbound listener could complete no handshake).

        Runs after every start of the app; its endpoint is withdrawn when the app exits.
        """
        spec, ports = running.spec, running.ports
        if running.network is not None:
            listening = wait_for_port_in(
                running.network.namespace, ports.app, self.settings.app_start_timeout
            )
        else:
            listening = wait_for_port("127.0.0.1", ports.app, self.settings.app_start_timeout)
        try:
            if not await _unless_exited(app, listening):
                return  # its supervisor reports the exit and restarts it
        except TimeoutError:
            log.error(
                "%s did not listen on PORT=%d within %.0fs; it gets no traffic",
                spec.name,
                ports.app,
                self.settings.app_start_timeout,
            )
            return
        await asyncio.wait({running.sidecar_started})
        if running.sidecar_started.cancelled() or running.sidecar_started.exception():
            return  # the replica is being taken down
        certificates = running.sidecar.certificates
        if certificates is not None:
            try:
                await asyncio.wait_for(certificates.ready.wait(), self.settings.app_start_timeout)
            except TimeoutError:
                log.error(
                    "%s's sidecar got no certificate for %s within %.0fs; it gets no traffic",
                    spec.name,
                    certificates.identity,
                    self.settings.app_start_timeout,
                )
                return
        if not app.running:
            return  # it died while we waited; its supervisor restarts it
        # Under interception, the replica's own address and its port: its iptables take
        # the connection to the sidecar's inbound listener.
        address, port = (
            (running.network.address, spec.port)
            if running.network is not None
            else ("127.0.0.1", ports.inbound)
        )
        self.replica_registry.set_endpoint(
            spec.hostname,
            spec.name,
            Endpoint(
                address=address,
                ports={spec.port: port},
                labels=dict(spec.labels),
                name=spec.name,
                service_account=spec.service_account,
                locality=spec.locality,
            ),
        )
        log.info("%s is serving %s", spec.name, spec.hostname)

    def _withdraw(self, running: _RunningReplica) -> None:
        # At once, so that callers stop sending to it while it is down.
        self.replica_registry.set_endpoint(running.spec.hostname, running.spec.name, None)

    async def _stop_replica(self, name: str) -> None:
        running = self.replicas.pop(name)
        # Once out of ``replicas`` nobody else will stop it: finish even if we are cancelled
        # (``stop()`` cancels a reconcile that may be right here).
        await _shielded(self._withdraw_and_stop(running))

    async def _withdraw_and_stop(self, running: _RunningReplica) -> None:
        running.app.stop_restarting()
        self._withdraw(running)
        # Let the endpoint removal reach the callers' sidecars before the replica goes away.
        await self.control_plane.wait_until_pushed(timeout=2.0)
        await self._shut_down(running, self.settings.drain_seconds)

    async def _shut_down(self, running: _RunningReplica, drain_seconds: float) -> None:
        running.app.stop_restarting()  # and no registration while the sidecar drains
        await self._retire(running.sidecar, drain_seconds)
        await running.app.stop()
        if running.network is not None and self.network is not None:
            await asyncio.to_thread(self.network.remove_replica, running.network)

    async def stop(self) -> None:
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconcile_task
        await asyncio.gather(*(self._stop_replica(name) for name in list(self.replicas)))
        if self.gateway is not None:
            await self._retire(self.gateway, self.settings.drain_seconds)
        await self.control_plane.stop()
        await self._close_network()
        shutil.rmtree(self._work_dir, ignore_errors=True)  # the Envoys' bootstrap files

    async def _close_network(self) -> None:
        network, self.network = self.network, None
        if network is not None:
            await asyncio.to_thread(network.close)


async def _unless_exited(app: ChildProcess, work: Coroutine[object, object, None]) -> bool:
    """Run ``work`` until it ends (True) or ``app`` exits first (False, ``work`` cancelled):
    an app that exits at once must not hold its restart back for the whole listen wait."""
    task = asyncio.ensure_future(work)
    either: set[asyncio.Future[Any]] = {task, app.exited}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return False
    task.result()
    return True


def _replica_node(spec: ReplicaSpec, ports: ReplicaPorts) -> ProxyNode:
    """The sidecar of one replica, as both interception modes start it."""
    return ProxyNode(
        id=spec.name,
        kind="sidecar",
        namespace=spec.namespace,
        service=spec.service,
        labels=dict(spec.labels),
        outbound_port=ports.outbound,
        inbound_port=ports.inbound,
        app_port=ports.app,
        app_protocol=spec.protocol,
        service_account=spec.service_account,
        workload=spec.workload,
        locality=spec.locality,
    )


async def _shielded(work: Coroutine[object, object, None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled; then pass the cancel on."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
