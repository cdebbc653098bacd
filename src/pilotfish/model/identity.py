"""Workload identity: SPIFFE ids and the names that the agent, its Envoy and the CA agree on.

One module so that the bootstrap (which names the SDS cluster), the translator (which names
the secrets in every TLS context) and the agent (which serves them) cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
# Istio's ingress gateway has its own account (istio-ingressgateway-service-account); ours
# runs in the default namespace under this one.
GATEWAY_SERVICE_ACCOUNT = "pilotfish-ingressgateway"

# What Envoy asks its agent for over SDS, as istio-agent names them.
WORKLOAD_CERT_SECRET = "default"
ROOT_CA_SECRET = "ROOTCA"
# The bootstrap's static cluster that reaches the agent's SDS server on a Unix socket.
SDS_CLUSTER_NAME = "sds-grpc"

SPIFFE_SCHEME = "spiffe://"


@dataclass(frozen=True, order=True)
class Identity:
    """Who a workload is: its trust domain, namespace and service account."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def spiffe_id(self) -> str:
        return f"{SPIFFE_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.spiffe_id

    @classmethod
    def parse(cls, spiffe_id: str) -> Identity:
        """The inverse of ``spiffe_id``; ``ValueError`` naming what is wrong otherwise."""
        if not spiffe_id.startswith(SPIFFE_SCHEME):
            raise ValueError(f"{spiffe_id!r} is not a SPIFFE id (spiffe://...)")
        parts = spiffe_id[len(SPIFFE_SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
            raise ValueError(
                f"{spiffe_id!r} is not of the form spiffe://<domain>/ns/<namespace>/sa/<account>"
            )
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])
