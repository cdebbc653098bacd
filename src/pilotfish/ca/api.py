"""What a workload's agent needs from the CA, whatever carries it (gRPC in the mesh, a
direct call in tests): sign a CSR for my identity, and tell me the roots to trust.

The agent depends on ``CertificateSigner`` only; the control plane's gRPC service and the
agent's client of it (``agent.ca_client``) are the two ends of one implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pilotfish.errors import PilotfishError


@dataclass(frozen=True)
class SignedCertificate:
    chain_pem: tuple[str, ...]
    """The workload certificate first, then each intermediate; never the root."""
    not_before: datetime
    not_after: datetime
    issuer_epoch: int | None
    """The CA's ``TrustBundle.issuer_epoch`` when it signed this (see there); None when the
    CA did not say (istiod sends no epoch): such a certificate is never re-issued because of
    an epoch, only at half its lifetime."""


@dataclass(frozen=True)
class TrustBundle:
    roots_pem: tuple[str, ...]
    """Every root a peer's chain may end in: two of them while a root rotation runs."""
    issuer_epoch: int
    """Grows each time the CA starts signing with another key (a root rotation): an agent
    holding a certificate of an older epoch re-issues at once (with jitter) rather than at
    half its lifetime, so that the old root can be dropped soon after."""


class CertificateRefused(PilotfishError):
    """The CA will not sign this request (wrong identity, bad CSR, bad credential): asking
    again unchanged will not help. Transient failures (CA unreachable) raise ``OSError`` or
    ``ConnectionError`` instead, and are retried with backoff."""


class CertificateSigner(Protocol):
    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate: ...

    def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        """The current bundle at once, then each new one; ends (or raises) when the CA
        goes away, and the caller watches again with backoff."""
        ...
