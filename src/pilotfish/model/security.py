"""Transport security as users write it: PeerAuthentication (the server's side) and the TLS
settings of DestinationRules and Gateway servers, plus Istio's rule for which peer
authentication mode a workload's port ends up with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pilotfish.model.resources import Meta, selector_matches

# Istio's default root namespace: a policy there without a selector covers the whole mesh.
ROOT_NAMESPACE = "istio-system"

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
# What a port ends up with once UNSET has been inherited all the way up.
EffectiveMtlsMode = Literal["DISABLE", "PERMISSIVE", "STRICT"]
DEFAULT_MTLS_MODE: EffectiveMtlsMode = "PERMISSIVE"

ClientTlsMode = Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
ServerTlsMode = Literal["SIMPLE", "MUTUAL"]
TlsVersion = Literal["TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]


@dataclass(frozen=True)
class PeerAuthentication:
    """``selector`` empty: the namespace's policy (the mesh's in ``ROOT_NAMESPACE``).

    ``port_mtls`` is keyed by the workload's own port (where the app listens), as in Istio.
    """

    meta: Meta
    mode: MtlsMode = "UNSET"
    selector: Mapping[str, str] = field(default_factory=dict)
    port_mtls: Mapping[int, MtlsMode] = field(default_factory=dict)

    @property
    def is_mesh_policy(self) -> bool:
        return not self.selector and self.meta.namespace == ROOT_NAMESPACE


@dataclass(frozen=True)
class ApplicablePeerAuthentications:
    """The policies Istio would compose for one workload: at most one per scope."""

    mesh: PeerAuthentication | None = None
    namespace: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None

    def mode_for_port(self, port: int | None) -> EffectiveMtlsMode:
        """Workload over namespace over mesh; UNSET inherits from the scope above it, and a
        port's own setting from the workload's. Nothing set anywhere: PERMISSIVE."""
        mode: EffectiveMtlsMode = DEFAULT_MTLS_MODE
        for policy in (self.mesh, self.namespace, self.workload):
            if policy is not None and policy.mode != "UNSET":
                mode = policy.mode
        if self.workload is not None and port is not None:
            port_mode = self.workload.port_mtls.get(port, "UNSET")
            if port_mode != "UNSET":
                mode = port_mode
        return mode


def applicable_peer_authentications(
    policies: Iterable[PeerAuthentication], namespace: str, labels: Mapping[str, str]
) -> ApplicablePeerAuthentications:
    """Which policies count for a workload in ``namespace`` with ``labels``.

    Istio lets the oldest policy of a scope win; a folder has no creation times, so the
    first one in file order wins (files sorted by name, documents in order).
    A policy with a selector in the root namespace is ignored, as Istio ignores it.
    """
    mesh = scope_namespace = workload = None
    for policy in policies:
        policy_namespace = policy.meta.namespace
        if policy.is_mesh_policy:
            mesh = mesh or policy
        elif not policy.selector and policy_namespace == namespace:
            scope_namespace = scope_namespace or policy
        elif (
            policy.selector
            and policy_namespace == namespace
            and policy_namespace != ROOT_NAMESPACE
            and selector_matches(policy.selector, labels)
        ):
            workload = workload or policy
    return ApplicablePeerAuthentications(mesh, scope_namespace, workload)


def effective_mtls_mode(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    port: int | None,
) -> EffectiveMtlsMode:
    return applicable_peer_authentications(policies, namespace, labels).mode_for_port(port)


@dataclass(frozen=True)
class ClientTLSSettings:
    """DestinationRule ``trafficPolicy.tls``. File paths are absolute (resolved against the
    folder of the file that names them)."""

    mode: ClientTlsMode
    ca_certificates: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    sni: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ServerTLSSettings:
    """Gateway server ``tls`` for HTTPS servers (files, absolute as above)."""

    mode: ServerTlsMode
    server_certificate: str
    private_key: str
    ca_certificates: str | None = None
    # None: Istio's defaults for gateways (TLS 1.2 and up).
    min_protocol_version: TlsVersion | None = None
    max_protocol_version: TlsVersion | None = None
