"""The CA's gRPC services, served on the xDS server's port.

``CreateCertificate`` is Istio's (``istio.v1.auth.IstioCertificateService``): the CSR and a
requested lifetime in, the chain out with the root last; the caller's credential in the
``authorization: Bearer <token>`` header. ``WatchTrustBundle`` is ours: the roots and the
issuer epoch now, then again on every change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from pilotfish.ca import wire
from pilotfish.ca.api import CertificateRefused
from pilotfish.ca.credentials import InvalidCredential
from pilotfish.ca.issuer import certificate_pem
from pilotfish.controller.certificates import MeshCertificateAuthority

log = logging.getLogger("pilotfish.ca")


def ca_method_handlers(ca: MeshCertificateAuthority) -> Sequence[grpc.GenericRpcHandler]:
    async def create_certificate(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        try:
            signed = ca.sign(
                request.csr,
                _bearer_token(metadata.get(wire.AUTHORIZATION_HEADER)),
                float(request.validity_duration),
                node_id=_node_id(request),
                peer=context.peer(),
            )
            # Read in the same step as the signature: a rotation cannot come in between.
            root = certificate_pem(ca.authority.root)
        except InvalidCredential as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except CertificateRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except Exception as exc:
            # A bug or a CA certificate we cannot sign with: the agent retries with backoff,
            # and the traceback is here, where the operator can act on it.
            log.exception("could not sign a certificate for peer %s", context.peer())
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the CA failed to sign ({type(exc).__name__}: {exc}); see the control plane's log",
            )
        if signed.issuer_epoch is not None:
            context.set_trailing_metadata(((wire.ISSUER_EPOCH_TRAILER, str(signed.issuer_epoch)),))
        return wire.IstioCertificateResponse(cert_chain=[*signed.chain_pem, root])

    async def watch_trust_bundle(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for bundle in ca.watch_trust_bundle():
            yield wire.TrustBundleMessage(
                roots=list(bundle.roots_pem), issuer_epoch=bundle.issuer_epoch
            )

    istio_service, istio_method = wire.CREATE_CERTIFICATE_METHOD.strip("/").split("/")
    bundle_service, bundle_method = wire.WATCH_TRUST_BUNDLE_METHOD.strip("/").split("/")
    return (
        grpc.method_handlers_generic_handler(
            istio_service,
            {
                istio_method: grpc.unary_unary_rpc_method_handler(
                    create_certificate,
                    request_deserializer=wire.IstioCertificateRequest.FromString,
                    response_serializer=wire.IstioCertificateResponse.SerializeToString,
                )
            },
        ),
        grpc.method_handlers_generic_handler(
            bundle_service,
            {
                bundle_method: grpc.unary_stream_rpc_method_handler(
                    watch_trust_bundle,
                    request_deserializer=wire.WatchTrustBundleRequest.FromString,
                    response_serializer=wire.TrustBundleMessage.SerializeToString,
                )
            },
        ),
    )


def _bearer_token(header: object) -> str | None:
    if not isinstance(header, str) or not header.startswith(wire.BEARER_PREFIX):
        return None
    return header[len(wire.BEARER_PREFIX) :].strip()


def _node_id(request: Any) -> str | None:
    if not request.HasField("metadata"):
        return None
    value = request.metadata.fields.get(wire.NODE_ID_KEY)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    return str(value.string_value) or None
