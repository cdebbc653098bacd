"""Where a VirtualService destination lands: its cluster and that cluster's load-balancing policy.

Built once per view and shared by cluster, endpoint and route generation, so every generator
agrees on which DestinationRule governs a host and which subsets exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pilotfish.model.destination_rules import DestinationRuleLookup
from pilotfish.model.resilience import ConnectionPool, OutlierDetection, RetryBudget
from pilotfish.model.resources import (
    ConsistentHash,
    Destination,
    DestinationRule,
    LoadBalancer,
    Subset,
    TrafficPolicy,
    qualify_host,
)
from pilotfish.model.security import ClientTLSSettings
from pilotfish.model.services import MeshView, Service
from pilotfish.translate.naming import outbound_cluster_name


@dataclass(frozen=True)
class ClusterTarget:
    """A destination that resolved to a cluster that the outbound clusters include."""

    cluster: str
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True)
class EffectivePolicy:
    """What governs one cluster (a service port, maybe a subset) once Istio's merge is done.
    ``tls`` None: auto mTLS."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    retry_budget: RetryBudget | None = None
    tls: ClientTLSSettings | None = None


def _for_port(policy: TrafficPolicy, port: int) -> tuple[EffectivePolicy, bool]:
    """``policy`` as it applies to ``port``, and whether a portLevelSettings entry matched.

    A matching entry stands in for the whole policy, as Istio's GetPortLevelTrafficPolicy
    does: its four fields replace the policy's even where it leaves them unset (port-level
    settings do not inherit), and the policy's retry budget does not apply to that port.
    """
    port_level = policy.port_settings.get(port)
    if port_level is not None:
        return EffectivePolicy(
            load_balancer=port_level.load_balancer,
            connection_pool=port_level.connection_pool,
            outlier_detection=port_level.outlier_detection,
            tls=port_level.tls,
        ), True
    return EffectivePolicy(
        load_balancer=policy.load_balancer,
        connection_pool=policy.connection_pool,
        outlier_detection=policy.outlier_detection,
        retry_budget=policy.retry_budget,
        tls=policy.tls,
    ), False


def _merged(rule: EffectivePolicy, subset: TrafficPolicy | None, port: int) -> EffectivePolicy:
    """A subset's policy over its rule's, as Istio's MergeTrafficPolicy: each field the
    subset sets replaces the rule's; a subset's port-level entry replaces the four port
    fields even where it leaves them unset, and keeps the rule's retry budget."""
    if subset is None:
        return rule
    own, port_level = _for_port(subset, port)
    if port_level:
        return replace(own, retry_budget=rule.retry_budget)
    return EffectivePolicy(
        load_balancer=own.load_balancer or rule.load_balancer,
        connection_pool=own.connection_pool or rule.connection_pool,
        outlier_detection=own.outlier_detection or rule.outlier_detection,
        retry_budget=own.retry_budget or rule.retry_budget,
        tls=own.tls or rule.tls,
    )


@dataclass(frozen=True)
class Unroutable:
    """A destination we cannot send traffic to; routes answer 503 with this reason."""

    reason: str


class DestinationIndex:
    """Services and their DestinationRules, keyed by canonical hostname."""

    def __init__(self, view: MeshView) -> None:
        self._services: Mapping[str, Service] = view.services
        lookup = DestinationRuleLookup(view.config.destination_rules)
        # Resolved once per service: a wildcard rule is matched against each name only here.
        self._rules: Mapping[str, DestinationRule] = {
            hostname: rule
            for hostname in view.services
            if (rule := lookup.rule_for(hostname)) is not None
        }

    def rule_for(self, hostname: str) -> DestinationRule | None:
        return self._rules.get(hostname)

    def subsets_of(self, hostname: str) -> tuple[Subset, ...]:
        rule = self._rules.get(hostname)
        return rule.subsets if rule is not None else ()

    def subset(self, hostname: str, name: str) -> Subset | None:
        return next((s for s in self.subsets_of(hostname) if s.name == name), None)

    def effective_policy(self, hostname: str, subset: str | None, port: int) -> EffectivePolicy:
        """The rule's policy for ``port`` (its port-level entry if one matches), then the
        subset's over it, merged as Istio does."""
        rule = self._rules.get(hostname)
        if rule is None or rule.traffic_policy is None:
            effective = EffectivePolicy()
        else:
            effective, _ = _for_port(rule.traffic_policy, port)
        if subset is not None:
            found = self.subset(hostname, subset)
            effective = _merged(effective, found.traffic_policy if found else None, port)
        return effective

    def resolve(
        self, destination: Destination, namespace: str, listener_port: int | None
    ) -> ClusterTarget | Unroutable:
        """Resolve a destination written in ``namespace``.

        Without an explicit port the service's only port is used; for a service with several
        ports, the port the request arrived for (``listener_port``) if the service has it.
        """
        hostname = qualify_host(destination.host, namespace)
        service = self._services.get(hostname)
        if service is None:
            return Unroutable(f"destination host {hostname} is not a known service")
        port = self._pick_port(service, destination.port, listener_port)
        if port is None:
            if destination.port is not None:
                return Unroutable(f"service {hostname} has no port {destination.port}")
            return Unroutable(f"service {hostname} has several ports and the route names none")
        if destination.subset is not None and self.subset(hostname, destination.subset) is None:
            return Unroutable(
                f"subset {destination.subset} of {hostname} is not defined by any DestinationRule"
            )
        balancer = self.effective_policy(hostname, destination.subset, port).load_balancer
        return ClusterTarget(
            cluster=outbound_cluster_name(port, hostname, destination.subset),
            consistent_hash=balancer.consistent_hash if balancer is not None else None,
        )

    @staticmethod
    def _pick_port(service: Service, wanted: int | None, listener_port: int | None) -> int | None:
        if wanted is not None:
            return wanted if service.port(wanted) is not None else None
        if len(service.ports) == 1:
            return service.ports[0].number
        if listener_port is not None and service.port(listener_port) is not None:
            return listener_port
        return None
