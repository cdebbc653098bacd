"""security.istio.io RequestAuthentication -> ``model.RequestAuthentication`` (JWT rules).

Keys come from ``jwks`` (inline JSON), or ``jwksUri``: ``http(s)://`` through the mesh's
cluster for that host, or ``file:///path`` (a Pilotfish extension: a JWKS file on this
machine, read by Envoy). Istio's istiod can also discover keys from an issuer's OpenID
configuration when neither is set; Pilotfish refuses that rule instead of guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, cast
from urllib.parse import urlsplit

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.parse_authorization import read_selector
from pilotfish.load.yaml_source import join_path
from pilotfish.model.authorization import (
    ClaimToHeader,
    JwksUri,
    JwtHeader,
    JwtRule,
    RequestAuthentication,
)
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.resources import Meta, qualify_host
from pilotfish.model.services import Service

SPEC_FIELDS = ("selector", "targetRef", "targetRefs", "jwtRules")
JWT_RULE_FIELDS = (
    "issuer",
    "audiences",
    "jwks",
    "jwksUri",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "forwardOriginalToken",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "timeout",
)
JWT_RULE_NOT_IMPLEMENTED = {
    "spaceDelimitedClaims": "claims are matched as Envoy reads them, not split at spaces",
}
HEADER_FIELDS = ("name", "prefix")
CLAIM_TO_HEADER_FIELDS = ("header", "claim")
# RFC 7230 token characters: what an HTTP header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PRIVATE_KEY_MEMBERS = ("d", "p", "q", "k")
_SCHEME_PORTS = {"http": 80, "https": 443}


def parse_request_authentication(
    reader: FieldReader, spec: Fields, meta: Meta
) -> RequestAuthentication | None:
    errors_before = reader.error_count
    selector = read_selector(reader, spec)
    rules = tuple(
        rule
        for item, path in reader.items(spec, "jwtRules", "spec")
        if (rule := _jwt_rule(reader, item, path)) is not None
    )
    if reader.error_count > errors_before:
        return None
    return RequestAuthentication(meta=meta, jwt_rules=rules, selector=selector)


def _jwt_rule(reader: FieldReader, value: object, path: str) -> JwtRule | None:
    fields = reader.mapping(value, path, JWT_RULE_FIELDS, JWT_RULE_NOT_IMPLEMENTED)
    if fields is None:
        return None
    issuer = reader.string(fields, "issuer", path)
    audiences = reader.string_list(fields, "audiences", path)
    jwks = reader.string(fields, "jwks", path)
    uri_text = reader.string(fields, "jwksUri", path)
    jwks_uri = _jwks_uri(reader, uri_text, join_path(path, "jwksUri")) if uri_text else None
    if not issuer and not uri_text:
        reader.error(join_path(path, "issuer"), "set issuer (or jwksUri)")
    if jwks is not None:
        _check_jwks(reader, jwks, join_path(path, "jwks"))
        if uri_text:
            # Istio accepts both and uses the inline keys.
            reader.warning(
                join_path(path, "jwksUri"),
                "jwks is set too: the inline keys are used and this URI is never fetched",
            )
            jwks_uri = None
    elif not uri_text:
        reader.error(
            path,
            "set jwks or jwksUri: Pilotfish does not discover keys from the issuer's "
            "OpenID configuration",
        )
    headers: list[JwtHeader] = []
    for item, item_path in reader.items(fields, "fromHeaders", path):
        header = reader.mapping(item, item_path, HEADER_FIELDS)
        if header is None:
            continue
        name = reader.string(header, "name", item_path, required=True)
        prefix = reader.string(header, "prefix", item_path) or ""
        if name is not None:
            headers.append(JwtHeader(name=name, prefix=prefix))
    params = reader.string_list(fields, "fromParams", path)
    cookies = reader.string_list(fields, "fromCookies", path)
    payload_header = reader.string(fields, "outputPayloadToHeader", path)
    if payload_header is not None:
        _check_header_name(reader, payload_header, join_path(path, "outputPayloadToHeader"))
    claims: list[ClaimToHeader] = []
    for item, item_path in reader.items(fields, "outputClaimToHeaders", path):
        pair = reader.mapping(item, item_path, CLAIM_TO_HEADER_FIELDS)
        if pair is None:
            continue
        header_name = reader.string(pair, "header", item_path, required=True)
        claim = reader.string(pair, "claim", item_path, required=True)
        if header_name is not None:
            _check_header_name(reader, header_name, join_path(item_path, "header"))
        if header_name and claim:
            claims.append(ClaimToHeader(header=header_name, claim=claim))
    timeout = reader.duration(fields, "timeout", path)
    return JwtRule(
        issuer=issuer or "",
        audiences=tuple(a for a in audiences if a),
        jwks=jwks,
        jwks_uri=jwks_uri,
        from_headers=tuple(headers),
        from_params=tuple(p for p in params if p),
        from_cookies=tuple(c for c in cookies if c),
        forward_original_token=reader.boolean(fields, "forwardOriginalToken", path) or False,
        output_payload_to_header=payload_header,
        output_claim_to_headers=tuple(claims),
        timeout=timeout,
    )


def _jwks_uri(reader: FieldReader, text: str, path: str) -> JwksUri | None:
    parts = urlsplit(text)
    if parts.scheme == "file":
        if not parts.path.startswith("/") or parts.netloc:
            reader.error(path, f"{text!r}: a file URI needs an absolute path (file:///...)")
            return None
        return JwksUri(uri=text, scheme="file", path=parts.path)
    if parts.scheme not in _SCHEME_PORTS or not parts.hostname:
        reader.error(path, f"{text!r}: the scheme must be http, https or file")
        return None
    try:
        port = parts.port or _SCHEME_PORTS[parts.scheme]
    except ValueError:
        reader.error(path, f"{text!r}: the port is not a number from 1 to 65535")
        return None
    return JwksUri(
        uri=text,
        scheme=cast(Literal["http", "https"], parts.scheme),
        host=parts.hostname,
        port=port,
        path=parts.path or "/",
    )


def _check_jwks(reader: FieldReader, text: str, path: str) -> None:
    try:
        document = json.loads(text)
    except ValueError as problem:
        reader.error(path, f"not a JSON Web Key Set: {problem}")
        return
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        reader.error(path, 'not a JSON Web Key Set: it needs a non-empty "keys" list')
        return
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            reader.error(path, f'keys[{index}] is not a JSON Web Key (no "kty")')
        elif any(member in key for member in _PRIVATE_KEY_MEMBERS):
            reader.warning(
                path,
                f"keys[{index}] holds private key material; only its public part is needed",
            )


def _check_header_name(reader: FieldReader, name: str, path: str) -> None:
    if _HEADER_NAME.fullmatch(name) is None:
        reader.error(path, f"{name!r} is not a valid HTTP header name")


def jwks_hosts_without_service(
    policies: Iterable[RequestAuthentication], services: Mapping[str, Service]
) -> Iterator[Diagnostic]:
    """A remote ``jwksUri`` of a mesh host goes through that host's cluster (so on one of its
    ports); any other host gets a DNS cluster of its own, except a short name, which can
    only mean a mesh service."""
    for policy in policies:
        for index, rule in enumerate(policy.jwt_rules):
            uri = rule.jwks_uri
            if uri is None or uri.scheme == "file":
                continue
            service = services.get(jwks_hostname(uri, policy.meta.namespace))
            path = f"spec.jwtRules[{index}].jwksUri"
            if service is None:
                if "." not in uri.host:
                    yield policy.meta.source.diagnostic(
                        path,
                        f"{uri.host} is not a service of the mesh (a host outside it needs "
                        "its full DNS name)",
                    )
            elif service.port(uri.port) is None:
                yield policy.meta.source.diagnostic(
                    path, f"{service.hostname} has no port {uri.port}"
                )
            elif uri.scheme == "https":
                yield policy.meta.source.diagnostic(
                    path,
                    f"keys are fetched over the cluster of {service.hostname} as it is: "
                    "Pilotfish does not originate TLS for it here, so unless that cluster "
                    "speaks TLS the fetch fails and every token of this issuer gets 401",
                    "warning",
                )


def jwks_hostname(uri: JwksUri, namespace: str) -> str:
    return qualify_host(uri.host, namespace)
