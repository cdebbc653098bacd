"""RequestAuthentication -> Envoy ``envoy.filters.http.jwt_authn``, as Istio configures it.

One provider per jwtRule of every RequestAuthentication that applies to the workload, and
one requirement: any provider, or no token at all. So a missing token passes (an
AuthorizationPolicy asking for ``requestPrincipals`` turns it away), while a token that is
present and fails (expired, unknown issuer, bad signature, wrong audience) gets 401.
Every provider leaves the verified payload in the same dynamic metadata key, where the RBAC
filters read the request principal (``iss``/``sub``) and claims.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import empty_pb2

from pilotfish.model.authorization import JwksUri, JwtRule, RequestAuthentication
from pilotfish.model.resources import qualify_host
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.translate.authorization import (
    JWT_FILTER_NAME,
    JWT_PAYLOAD_KEY,
    details_starting_with,
    text_body,
)
from pilotfish.translate.clusters import CONNECT_TIMEOUT_SECONDS
from pilotfish.translate.endpoints import load_assignment
from pilotfish.translate.naming import outbound_cluster_name
from pilotfish.translate.proto_values import duration_from_seconds, pack
from pilotfish.translate.tls_contexts import SYSTEM_CA_BUNDLE, TLS_SOCKET

# Istio's default for fetching remote keys, and how long Envoy keeps them.
DEFAULT_JWKS_TIMEOUT_SECONDS = 5.0
JWKS_CACHE_SECONDS = 300.0
JWT_DENIED_DETAILS = "jwt_authn_access_denied"
# Debian's bundle of the public CAs: what an https jwksUri outside the mesh is checked against.


def provider_name(policy: RequestAuthentication, index: int) -> str:
    return f"{policy.ref}:jwtRules[{index}]"


def build_jwt_filter(policies: Sequence[RequestAuthentication]) -> hcm_pb2.HttpFilter | None:
    """The filter for the RequestAuthentications that apply to one workload (None: none)."""
    config = jwt_pb2.JwtAuthentication()
    names = []
    for policy in policies:
        for index, rule in enumerate(policy.jwt_rules):
            name = provider_name(policy, index)
            config.providers[name].CopyFrom(_provider(rule, policy.meta.namespace))
            names.append(name)
    if not names:
        return None
    config.rules.append(
        jwt_pb2.RequirementRule(
            match=rc.RouteMatch(prefix="/"),
            requires=jwt_pb2.JwtRequirement(
                requires_any=jwt_pb2.JwtRequirementOrList(
                    requirements=[
                        *(jwt_pb2.JwtRequirement(provider_name=n) for n in names),
                        jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()),
                    ]
                )
            ),
        )
    )
    return hcm_pb2.HttpFilter(name=JWT_FILTER_NAME, typed_config=pack(config))


def _provider(rule: JwtRule, namespace: str) -> jwt_pb2.JwtProvider:
    provider = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        forward=rule.forward_original_token,
        from_headers=[
            jwt_pb2.JwtHeader(name=h.name, value_prefix=h.prefix) for h in rule.from_headers
        ],
        from_params=rule.from_params,
        from_cookies=rule.from_cookies,
        payload_in_metadata=JWT_PAYLOAD_KEY,
        claim_to_headers=[
            jwt_pb2.JwtClaimToHeader(header_name=c.header, claim_name=c.claim)
            for c in rule.output_claim_to_headers
        ],
    )
    if rule.output_payload_to_header:
        provider.forward_payload_header = rule.output_payload_to_header
    uri = rule.jwks_uri
    if rule.jwks is not None:
        provider.local_jwks.CopyFrom(base_pb2.DataSource(inline_string=rule.jwks))
    elif uri is not None and uri.scheme == "file":
        provider.local_jwks.CopyFrom(base_pb2.DataSource(filename=uri.path))
    elif uri is not None:
        # The mesh's own cluster for the host, so keys are fetched the way the app would
        # reach it; for a host outside the mesh, one of build_jwks_clusters by that name.
        provider.remote_jwks.CopyFrom(
            jwt_pb2.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=uri.uri,
                    cluster=outbound_cluster_name(uri.port, qualify_host(uri.host, namespace)),
                    timeout=duration_from_seconds(rule.timeout or DEFAULT_JWKS_TIMEOUT_SECONDS),
                ),
                cache_duration=duration_from_seconds(JWKS_CACHE_SECONDS),
            )
        )
    return provider


def jwt_failure_mapper(
    proxy: str, policies: Sequence[RequestAuthentication]
) -> hcm_pb2.ResponseMapper | None:
    """A body for jwt_authn's own replies (401, or 403 for a disallowed audience) that says
    which proxy refused the token and which issuers it accepts, after Envoy's reason."""
    issuers = sorted({r.issuer or "(any)" for p in policies for r in p.jwt_rules})
    if not issuers:
        return None
    return hcm_pb2.ResponseMapper(
        filter=details_starting_with(JWT_DENIED_DETAILS),
        body_format_override=text_body(
            f"JWT rejected by {proxy} (issuers accepted here: {', '.join(issuers)}): ",
            "%LOCAL_REPLY_BODY% [%RESPONSE_CODE_DETAILS%]",
        ),
    )


def build_jwks_clusters(view: MeshView) -> tuple[cluster_pb2.Cluster, ...]:
    """A DNS cluster for each remote ``jwksUri`` host outside the mesh, under the name the
    providers use (the mesh's own hosts already have their outbound cluster by that name).
    ``https`` verifies the server against the system's trust store and the host's name."""
    found: dict[str, cluster_pb2.Cluster] = {}
    for policy in view.config.request_authentications:
        for rule in policy.jwt_rules:
            uri = rule.jwks_uri
            if uri is None or uri.scheme == "file":
                continue
            host = qualify_host(uri.host, policy.meta.namespace)
            if host in view.services:
                continue
            name = outbound_cluster_name(uri.port, host)
            found.setdefault(name, _jwks_cluster(name, uri))
    return tuple(found[name] for name in sorted(found))


def _jwks_cluster(name: str, uri: JwksUri) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_from_seconds(CONNECT_TIMEOUT_SECONDS),
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        load_assignment=load_assignment(name, [Endpoint(uri.host, {uri.port: uri.port})], uri.port),
    )
    if uri.scheme == "https":
        context = tls_pb2.UpstreamTlsContext(
            sni=uri.host,
            common_tls_context=tls_pb2.CommonTlsContext(
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=SYSTEM_CA_BUNDLE),
                    match_typed_subject_alt_names=[
                        common_pb2.SubjectAltNameMatcher(
                            san_type=common_pb2.SubjectAltNameMatcher.DNS,
                            matcher=string_pb2.StringMatcher(exact=uri.host),
                        )
                    ],
                )
            ),
        )
        cluster.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
        )
    return cluster
