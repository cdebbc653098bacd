"""Pure planning for the local runner: which replicas to run and what each one is told."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pilotfish.model.proxy import ProxyUpstream
from pilotfish.model.resources import (
    MeshConfig,
    Protocol,
    Upstream,
    Workload,
    qualify_host,
    upstream_environment_name,
)


@dataclass(frozen=True)
class ReplicaPorts:
    app: int
    inbound: int
    outbound: int


@dataclass(frozen=True)
class ReplicaSpec:
    """One process to run, with what would make it need a restart if it changed."""

    name: str
    workload: str
    index: int
    service: str
    hostname: str
    namespace: str
    port: int
    protocol: Protocol
    command: tuple[str, ...]
    directory: str
    labels: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str], ...]
    service_account: str
    locality: str | None = None
    upstreams: tuple[Upstream, ...] = ()


def plan_replicas(config: MeshConfig) -> dict[str, ReplicaSpec]:
    """Every replica of every Workload, keyed by its stable name ``<workload>-<index>``."""
    plan: dict[str, ReplicaSpec] = {}
    for workload in config.workloads:
        for index in range(workload.replicas):
            spec = _replica(workload, index)
            plan[spec.name] = spec
    return plan


def _replica(workload: Workload, index: int) -> ReplicaSpec:
    return ReplicaSpec(
        name=f"{workload.meta.name}-{index}",
        workload=workload.meta.name,
        index=index,
        service=workload.service,
        hostname=qualify_host(workload.service, workload.meta.namespace),
        namespace=workload.meta.namespace,
        port=workload.port,
        protocol=workload.protocol,
        command=workload.command,
        directory=workload.directory,
        labels=tuple(sorted(workload.labels.items())),
        env=tuple(sorted(workload.env.items())),
        service_account=workload.service_account,
        locality=workload.locality,
        upstreams=workload.upstreams,
    )


@dataclass(frozen=True)
class ReplicaUpstream:
    """One ``upstreams`` entry of a replica, resolved: its sidecar's listener and the
    environment variable that tells the app where it is."""

    proxy: ProxyUpstream
    environment_name: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy.local_port}"


def replica_upstreams(
    spec: ReplicaSpec, pick_port: Callable[[], int]
) -> tuple[ReplicaUpstream, ...]:
    """Short service names are in the Workload's namespace; an entry without ``localPort``
    gets ``pick_port()`` (a free port) for this replica."""
    return tuple(
        ReplicaUpstream(
            ProxyUpstream(
                qualify_host(upstream.service, spec.namespace),
                upstream.port,
                upstream.local_port if upstream.local_port is not None else pick_port(),
            ),
            upstream_environment_name(upstream.service, upstream.port),
        )
        for upstream in spec.upstreams
    )


def replica_environment(
    spec: ReplicaSpec, ports: ReplicaPorts, inherited: Mapping[str, str]
) -> dict[str, str]:
    """The app's environment: the user's ``env`` over what it inherits, then the mesh's own.

    The mesh's variables come last: an app told another PORT or proxy would fall out of the
    mesh (the loader warns about such keys). Loopback bypasses the proxy, so an app can still
    reach itself directly.

    HTTPS_PROXY names the same sidecar: HTTPS clients (and grpcio, which reads grpc_proxy,
    https_proxy, then http_proxy) send it ``CONNECT host:port``, which it carries to the
    service, or to an outside host a ServiceEntry declares with its TLS untouched.
    """
    proxy = f"http://127.0.0.1:{ports.outbound}"
    env = {**inherited, "PYTHONUNBUFFERED": "1", **dict(spec.env)}
    env.update(
        {
            "PORT": str(ports.app),
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "PILOTFISH_SERVICE": spec.service,
            "PILOTFISH_REPLICA": spec.name,
            "PILOTFISH_WORKLOAD": spec.workload,
        }
    )
    return env
