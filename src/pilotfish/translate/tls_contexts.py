"""TLS contexts: the mesh's mutual TLS (certificates from the agent over SDS) on both ends of a
connection between sidecars, and TLS from files for external services and gateway servers.

The mesh's certificates never appear in xDS: every context names the secrets ``default`` and
``ROOTCA``, which each Envoy fetches from its own agent (cluster ``sds-grpc``).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from pilotfish.model.identity import (
    ROOT_CA_SECRET,
    SDS_CLUSTER_NAME,
    SPIFFE_SCHEME,
    WORKLOAD_CERT_SECRET,
)
from pilotfish.model.security import ClientTLSSettings, ServerTLSSettings
from pilotfish.translate.proto_values import pack

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
# Envoy picks a cluster's transport_socket_matches entry by this endpoint metadata key;
# the label and value are Istio's (``security.istio.io/tlsMode: istio`` on injected pods).
TRANSPORT_SOCKET_MATCH_KEY = "envoy.transport_socket_match"
TLS_MODE_LABEL = "tlsMode"
TLS_MODE_ISTIO = "istio"
MESH_ALPN_SERVER = ("h2", "http/1.1")
# Where Debian (and Istio's proxy image) keep the system's trusted roots: a SIMPLE or MUTUAL
# DestinationRule without caCertificates verifies the server against them, as Istio does.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def istio_tls_mode() -> struct_pb2.Struct:
    """What a sidecar-served endpoint carries, and what the cluster's mTLS match asks for."""
    mode = struct_pb2.Struct()
    mode.update({TLS_MODE_LABEL: TLS_MODE_ISTIO})
    return mode


def sds_secret(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            api_config_source=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                            cluster_name=SDS_CLUSTER_NAME
                        )
                    )
                ],
                set_node_on_first_message_only=True,
            ),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _tls_params() -> common_pb2.TlsParameters:
    # Istio's range. Envoy's own default maximum for a client is TLS 1.2.
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    )


def _san_matchers(names: Iterable[str]) -> list[common_pb2.SubjectAltNameMatcher]:
    """A SPIFFE id is a URI SAN; any other name is a DNS SAN."""
    return [
        common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.URI
            if name.startswith(SPIFFE_SCHEME)
            else common_pb2.SubjectAltNameMatcher.DNS,
            matcher=string_pb2.StringMatcher(exact=name),
        )
        for name in names
    ]


def _mesh_common_context(
    alpn: Iterable[str], subject_alt_names: Iterable[str] = ()
) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=_tls_params(),
        alpn_protocols=list(alpn),
        tls_certificate_sds_secret_configs=[sds_secret(WORKLOAD_CERT_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=_san_matchers(subject_alt_names)
            ),
            validation_context_sds_secret_config=sds_secret(ROOT_CA_SECRET),
        ),
    )


def mesh_downstream_context() -> tls_pb2.DownstreamTlsContext:
    """The server's side of mesh mTLS: any caller with a certificate from the mesh's CA.
    Who may call is authorization's business (as in Istio), not the handshake's."""
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=_mesh_common_context(MESH_ALPN_SERVER),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )


def mesh_upstream_context(
    subject_alt_names: Iterable[str], sni: str, alpn: Iterable[str]
) -> tls_pb2.UpstreamTlsContext:
    """The client's side: the server must prove one of ``subject_alt_names`` (none: any
    identity the mesh's CA signed). No ``alpn``: Envoy offers each connection's codec."""
    return tls_pb2.UpstreamTlsContext(
        common_tls_context=_mesh_common_context(alpn, subject_alt_names), sni=sni
    )


def file_upstream_context(
    settings: ClientTLSSettings, default_sni: str | None, alpn: Iterable[str]
) -> tls_pb2.UpstreamTlsContext:
    """A DestinationRule's SIMPLE or MUTUAL TLS with certificates from files."""
    common = tls_pb2.CommonTlsContext(tls_params=_tls_params(), alpn_protocols=list(alpn))
    if settings.mode == "MUTUAL" and settings.client_certificate and settings.private_key:
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=settings.client_certificate),
                private_key=base_pb2.DataSource(filename=settings.private_key),
            )
        )
    sni = settings.sni or default_sni
    if not settings.insecure_skip_verify:
        # Without subjectAltNames the server must still prove the name it was asked for
        # (Istio's auto SAN validation): any certificate the CAs signed is not enough.
        names = settings.subject_alt_names or ((sni,) if sni else ())
        common.validation_context.CopyFrom(
            common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(
                    filename=settings.ca_certificates or SYSTEM_CA_BUNDLE
                ),
                match_typed_subject_alt_names=_san_matchers(names),
            )
        )
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    if sni:
        context.sni = sni
    return context


_TLS_VERSIONS = {
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def _server_tls_params(settings: ServerTLSSettings) -> common_pb2.TlsParameters:
    params = _tls_params()
    if settings.min_protocol_version is not None:
        params.tls_minimum_protocol_version = _TLS_VERSIONS[settings.min_protocol_version]
    if settings.max_protocol_version is not None:
        params.tls_maximum_protocol_version = _TLS_VERSIONS[settings.max_protocol_version]
    return params


def gateway_downstream_context(settings: ServerTLSSettings) -> tls_pb2.DownstreamTlsContext:
    """A Gateway server's SIMPLE (server certificate only) or MUTUAL (clients must present a
    certificate that ``caCertificates`` signed) TLS."""
    common = tls_pb2.CommonTlsContext(
        tls_params=_server_tls_params(settings),
        alpn_protocols=list(MESH_ALPN_SERVER),
        tls_certificates=[
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=settings.server_certificate),
                private_key=base_pb2.DataSource(filename=settings.private_key),
            )
        ],
    )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if settings.mode == "MUTUAL" and settings.ca_certificates:
        context.common_tls_context.validation_context.trusted_ca.filename = settings.ca_certificates
        context.require_client_certificate.value = True
    return context


def tls_socket(
    context: tls_pb2.DownstreamTlsContext | tls_pb2.UpstreamTlsContext,
) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def raw_buffer_socket() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=RAW_BUFFER_SOCKET, typed_config=pack(raw_buffer_pb2.RawBuffer())
    )
