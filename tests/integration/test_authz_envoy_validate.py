"""Envoy itself accepts the RBAC and jwt_authn filters and the local-reply mappers that
AuthorizationPolicy and RequestAuthentication translate to (``envoy --mode validate``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.integration.test_translate_envoy_validate import (
    envoy_validate,
    every_feature_view,
    static_bootstrap,
)
from tests.jwt_tokens import SigningKey

from pilotfish.agent.ports import free_port
from pilotfish.load import load_texts
from pilotfish.model.proxy import ProxyNode
from pilotfish.translate import MeshTranslator

pytestmark = pytest.mark.integration

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everything-listed, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/b", "*-admin", "cluster.local/*", "*"]
        notPrincipals: ["x"]
        requestPrincipals: ["https://issuer/sub", "*"]
        notRequestPrincipals: ["*/bad", "https://x/*"]
        namespaces: ["prod", "team-*"]
        notNamespaces: ["*"]
        ipBlocks: ["10.0.0.0/8", "192.168.1.1"]
        notIpBlocks: ["::1"]
        remoteIpBlocks: ["172.16.0.0/12"]
        notRemoteIpBlocks: ["fd00::/8"]
        trustDomains: ["cluster.local", "*.example", "*"]
        notTrustDomains: ["old.*"]
  - from:
    - source: {serviceAccounts: ["web", "prod/api"], notServiceAccounts: ["prod/admin"]}
    to:
    - operation:
        hosts: ["a.example", "*.example", "api.*", "*"]
        notHosts: ["b.example"]
        ports: ["8080"]
        notPorts: ["9090"]
        methods: ["POST", "*"]
        notMethods: ["GET"]
        paths: ["/admin", "/admin/*", "*.php", "*"]
        notPaths: ["/public*"]
    when:
    - {key: "request.headers[x-user]", values: ["bob", "*"], notValues: ["eve*"]}
    - {key: source.ip, values: ["10.1.2.3"]}
    - {key: remote.ip, notValues: ["10.0.0.0/16"]}
    - {key: source.namespace, values: ["prod"]}
    - {key: source.principal, values: ["cluster.local/ns/a/sa/b"]}
    - {key: source.serviceAccount, values: ["default/web"]}
    - {key: source.trustDomain, notValues: ["evil*"]}
    - {key: request.auth.principal, values: ["iss/sub"]}
    - {key: request.auth.audiences, values: ["web"]}
    - {key: request.auth.presenter, values: ["app*"]}
    - {key: "request.auth.claims[groups]", values: ["admin"]}
    - {key: "request.auth.claims[realm][role]", values: ["*"]}
    - {key: destination.ip, values: ["127.0.0.1"]}
    - {key: destination.port, values: ["8080"]}
    - {key: connection.sni, values: ["*.example"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-some, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: trial, namespace: istio-system, annotations: {istio.io/dry-run: "true"}}
spec:
  rules: [{to: [{operation: {paths: ["/trial"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audit"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules:
  - issuer: inline
    audiences: [web]
    jwks: '__JWKS__'
    fromHeaders: [{name: x-token, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
  - issuer: file
    jwksUri: file://__JWKS_FILE__
  - issuer: remote
    jwksUri: http://backend.default.svc.cluster.local:8080/jwks
    timeout: 2s
  - issuer: outside
    jwksUri: https://keys.example.com/.well-known/jwks.json
"""


@pytest.mark.parametrize("kind", ["sidecar", "gateway"])
def test_envoy_accepts_authorization_filters(kind: str, tmp_path: Path) -> None:
    view = every_feature_view(free_port())
    key = SigningKey()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(key.jwks())
    text = POLICIES.replace("__JWKS__", key.jwks()).replace("__JWKS_FILE__", str(jwks_file))
    loaded = load_texts([("policies.yaml", text)], known_services=view.services)
    assert loaded.config is not None, loaded.diagnostics
    config = replace(
        view.config,
        authorization_policies=loaded.config.authorization_policies,
        request_authentications=loaded.config.request_authentications,
    )
    view = replace(view, config=config)
    if kind == "sidecar":
        node = ProxyNode(
            id="backend-0",
            service="backend",
            labels={"app": "backend"},
            outbound_port=free_port(),
            inbound_port=free_port(),
            app_port=free_port(),
        )
    else:
        node = ProxyNode(id="ingress-0", kind="gateway")
    resources = MeshTranslator(view).resources_for(node)
    emitted = str(resources.listeners)
    for feature in (
        "envoy.filters.http.rbac",
        "envoy.filters.http.jwt_authn",
        "rbac_access_denied_matched_policy[none]",
        "jwt_authn_access_denied",
    ):
        assert feature in emitted, f"the scenario lost {feature}"
    assert "outbound|443||keys.example.com" in str(resources.clusters)

    result = envoy_validate(static_bootstrap(resources), tmp_path)

    assert result.returncode == 0, result.stdout
