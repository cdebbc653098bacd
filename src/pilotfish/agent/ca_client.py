"""The agent's end of the CA: ``CertificateSigner`` over the control plane's gRPC services.

Refusals (bad credential, a CSR for another identity) raise ``CertificateRefused``;
everything else that goes wrong on the way (CA down, timeout, a reset stream) raises
``CertificateAuthorityUnavailable``, a ``ConnectionError``, which the caller retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography import x509

from pilotfish.ca import wire
from pilotfish.ca.api import CertificateRefused, SignedCertificate, TrustBundle

_REFUSALS = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class CertificateAuthorityUnavailable(ConnectionError):
    """The CA could not be asked, or did not answer; asking again later may work."""


class GrpcCertificateSigner:
    """Ask the CA at ``address`` ("host:port", the xDS server's) with ``token``, the bearer
    credential of this agent's identity; ``node_id`` lets the CA show who holds what."""

    def __init__(
        self, address: str, token: str, node_id: str | None = None, timeout: float = 10.0
    ) -> None:
        self.address = address
        self._token = token
        self._node_id = node_id
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    def _connect(self) -> Any:
        # Made on first use: a grpc.aio channel belongs to the loop that is running then.
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return self._channel

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        request = wire.IstioCertificateRequest(csr=csr_pem, validity_duration=int(ttl_seconds))
        if self._node_id:
            request.metadata.update({wire.NODE_ID_KEY: self._node_id})
        create = self._connect().unary_unary(
            wire.CREATE_CERTIFICATE_METHOD,
            request_serializer=wire.IstioCertificateRequest.SerializeToString,
            response_deserializer=wire.IstioCertificateResponse.FromString,
        )
        call = create(
            request,
            metadata=((wire.AUTHORIZATION_HEADER, wire.BEARER_PREFIX + self._token),),
            timeout=self._timeout,
        )
        try:
            response = await call
            trailers = dict(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        chain = list(response.cert_chain)
        if len(chain) < 2:
            raise CertificateRefused(
                f"the CA at {self.address} answered with {len(chain)} certificate(s); "
                "a leaf and the root at least were expected"
            )
        try:
            leaf = x509.load_pem_x509_certificate(chain[0].encode())
            sent_epoch = trailers.get(wire.ISSUER_EPOCH_TRAILER)
            # A CA without our trailer (istiod) has no epoch to compare: unknown, not 0.
            epoch = None if sent_epoch is None else int(sent_epoch)
        except ValueError as exc:
            raise CertificateRefused(f"the CA at {self.address} answered nonsense: {exc}") from exc
        return SignedCertificate(
            chain_pem=tuple(chain[:-1]),  # Istio's order puts the root last; it is in the bundle
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issuer_epoch=epoch,
        )

    async def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        watch = self._connect().unary_stream(
            wire.WATCH_TRUST_BUNDLE_METHOD,
            request_serializer=wire.WatchTrustBundleRequest.SerializeToString,
            response_deserializer=wire.TrustBundleMessage.FromString,
        )
        call = watch(wire.WatchTrustBundleRequest())
        try:
            async for message in call:
                yield TrustBundle(
                    roots_pem=tuple(message.roots), issuer_epoch=int(message.issuer_epoch)
                )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        finally:
            call.cancel()
        raise CertificateAuthorityUnavailable(f"the CA at {self.address} ended the bundle stream")

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    message = f"{exc.code().name}: {exc.details()}"
    if exc.code() in _REFUSALS:
        return CertificateRefused(message)
    return CertificateAuthorityUnavailable(message)
