"""AuthorizationPolicy and RequestAuthentication in a real `pilotfish up` mesh: real Envoys,
real HTTP requests through the gateway to sidecars (plaintext; rules on peer identities need
mTLS and are covered by the unit tests)."""

from __future__ import annotations

import base64
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.jwt_tokens import SigningKey
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ISSUER = "https://issuer.test"
FILE_ISSUER = "file-issuer"
REMOTE_ISSUER = "remote-issuer"
OUTSIDE_ISSUER = "outside-issuer"
JWKS_SERVER = Path(__file__).parent / "apps" / "jwks_server.py"

EDGE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /backend/}}]
    rewrite: {uri: /}
    route: [{destination: {host: backend}}]
  - match: [{uri: {prefix: /locked/}}]
    rewrite: {uri: /}
    route: [{destination: {host: locked}}]
  - match: [{uri: {prefix: /secure/}}]
    rewrite: {uri: /}
    route: [{destination: {host: secure}}]
  - match: [{uri: {prefix: /identity/}}]
    rewrite: {uri: /}
    route: [{destination: {host: identity}}]
  - route: [{destination: {host: backend}}]
"""

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-allow}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - to: [{operation: {methods: [GET], paths: ["/public/*", "*.js"]}}]
  - when: [{key: "request.headers[x-user]", values: [alice]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-deny}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/public/secret*"]}}]
  - when: [{key: "request.headers[x-user]", values: [mallory]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-trial-deny, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/public/trial*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: identity-callers}
spec:
  selector: {matchLabels: {app: identity}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/pilotfish-ingressgateway"]}}]
    to: [{operation: {paths: ["/gateway-only/*"]}}]
  - from: [{source: {namespaces: [prod]}}]
    to: [{operation: {paths: ["/prod-only/*"]}}]
  - from: [{source: {serviceAccounts: [default]}}]
    to: [{operation: {paths: ["/sidecars-only/*"], ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: locked-down}
spec:
  selector: {matchLabels: {app: locked}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/blocked-at-edge"]}}]
  - to: [{operation: {hosts: ["*.blocked.example"]}}]
  - from: [{source: {ipBlocks: ["127.0.0.0/8"]}}]
    to: [{operation: {paths: ["/not-from-loopback"]}}]
  - from: [{source: {notIpBlocks: ["127.0.0.0/8"]}}]
    to: [{operation: {paths: ["/only-from-loopback"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-allow, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
    to: [{operation: {paths: ["/backend/public/partners/*"]}}]
  - from: [{source: {remoteIpBlocks: ["127.0.0.0/8"]}}]
    to: [{operation: {paths: ["/backend/public/loopback/*"]}}]
  - to: [{operation: {notPaths: ["/backend/public/partners/*", "/backend/public/loopback/*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: secure-jwt}
spec:
  selector: {matchLabels: {app: secure}}
  jwtRules:
  - issuer: "__ISSUER__"
    audiences: [web]
    jwks: '__JWKS__'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]
  - issuer: "__FILE_ISSUER__"
    jwksUri: "file://__JWKS_FILE__"
  - issuer: "__REMOTE_ISSUER__"
    jwksUri: http://keys.default.svc.cluster.local:8080/jwks
  - issuer: "__OUTSIDE_ISSUER__"
    jwksUri: "http://127.0.0.1:__OUTSIDE_PORT__/jwks.json"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secure-needs-token}
spec:
  selector: {matchLabels: {app: secure}}
  rules:
  - to: [{operation: {notPaths: ["/private*"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/private*"]}}]
    when: [{key: "request.auth.claims[group]", values: [admins]}]
"""


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> dict[str, object]:
        body = json.loads(self.text)
        assert isinstance(body, dict)
        return body


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    mesh: RunningMesh, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Answer:
    request = urllib.request.Request(
        mesh.gateway_url + path, headers=dict(headers or {}), method=method
    )
    try:
        with _direct.open(request, timeout=10) as response:
            return Answer(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read().decode())


@dataclass(frozen=True)
class Keys:
    main: SigningKey
    file: SigningKey
    remote: SigningKey
    outside: SigningKey
    stranger: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        SigningKey("main"),
        SigningKey("file"),
        SigningKey("remote"),
        SigningKey("outside"),
        SigningKey("main"),
    )


@pytest.fixture(scope="module")
def outside_jwks(keys: Keys) -> Iterator[int]:
    """A key set served from outside the mesh (this test process), on a free port."""
    body = keys.outside.jwks().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def jwks_workload(jwks: str) -> str:
    """The keys service: a mesh workload the sidecars fetch a key set from."""
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: keys}}
spec:
  service: keys
  port: 8080
  labels: {{app: keys}}
  command: [{sys.executable}, {JWKS_SERVER}]
  env: {{JWKS: {json.dumps(jwks)}}}
---
"""


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, outside_jwks: int
) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("authz")
    jwks_file = directory.parent / f"{directory.name}-jwks.json"
    jwks_file.write_text(keys.file.jwks())
    policies = (
        POLICIES.replace("__ISSUER__", ISSUER)
        .replace("__FILE_ISSUER__", FILE_ISSUER)
        .replace("__REMOTE_ISSUER__", REMOTE_ISSUER)
        .replace("__OUTSIDE_ISSUER__", OUTSIDE_ISSUER)
        .replace("__OUTSIDE_PORT__", str(outside_jwks))
        .replace("__JWKS__", keys.main.jwks())
        .replace("__JWKS_FILE__", str(jwks_file))
    )
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("backend", "backend", 8080)
        + echo_workload("locked", "locked", 8080)
        + echo_workload("secure", "secure", 8080)
        + echo_workload("identity", "identity", 8080)
        + jwks_workload(keys.remote.jwks())
        + EDGE
        + "---\n"
        + policies,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/public/ready")
        for service in ("backend", "locked", "secure", "keys", "identity"):
            running.wait_endpoints(f"{service}.default.svc.cluster.local", 1)
        running.wait_synced()
        yield running


# --- AuthorizationPolicy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "method"),
    [
        ("/backend/public/page", {}, "GET"),
        ("/backend/static/app.js", {}, "GET"),
        ("/backend/private", {"x-user": "alice"}, "GET"),
    ],
)
def test_a_request_an_allow_rule_matches_reaches_the_app(
    mesh: RunningMesh, path: str, headers: dict[str, str], method: str
) -> None:
    answer = call(mesh, path, headers, method)

    assert answer.status == 200, answer.text
    assert answer.json()["replica"] == "backend-0"


@pytest.mark.parametrize(
    ("path", "headers", "method"),
    [
        ("/backend/private", {}, "GET"),
        ("/backend/private", {"x-user": "bob"}, "GET"),
        ("/backend/public/page", {}, "POST"),
        ("/backend/app.jsx", {}, "GET"),
    ],
)
def test_a_request_no_allow_rule_matches_is_denied_naming_the_allow_policies(
    mesh: RunningMesh, path: str, headers: dict[str, str], method: str
) -> None:
    answer = call(mesh, path, headers, method)

    assert answer.status == 403
    assert answer.text.startswith("RBAC: access denied by backend-0: no ALLOW policy matched")
    assert "default/backend-allow" in answer.text


@pytest.mark.parametrize(
    ("path", "headers", "rule"),
    [
        ("/backend/public/secret/key", {}, 0),
        ("/backend/public/page", {"x-user": "mallory"}, 1),
        # DENY comes first: alice's ALLOW rule does not save her from it.
        ("/backend/public/secret", {"x-user": "alice"}, 0),
    ],
)
def test_a_deny_rule_wins_and_is_named(
    mesh: RunningMesh, path: str, headers: dict[str, str], rule: int
) -> None:
    answer = call(mesh, path, headers)

    assert answer.status == 403
    assert answer.text == (
        f"RBAC: access denied by backend-0: DENY policy default/backend-deny matched "
        f"(rules[{rule}])\n"
    )


def test_a_dry_run_deny_policy_denies_nothing(mesh: RunningMesh) -> None:
    assert call(mesh, "/backend/public/trial").status == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        # The gateway's own SPIFFE identity, proved over the mesh's mTLS.
        ("/identity/gateway-only/x", 200),
        ("/identity/prod-only/x", 403),
        # The gateway's account is not "default": only sidecars running as it get in.
        ("/identity/sidecars-only/x", 403),
        # backend-0 (service account default) calls identity from its own sidecar.
        ("/backend/call?url=http://identity:8080/sidecars-only/x", 200),
        ("/backend/call?url=http://identity:8080/gateway-only/x", 403),
    ],
)
def test_rules_on_the_callers_identity_over_the_meshs_mtls(
    mesh: RunningMesh, path: str, status: int
) -> None:
    # alice passes backend's own ALLOW policy, so /call reaches its app.
    answer = call(mesh, path, {"x-user": "alice"})

    assert answer.status == status, answer.text
    if path.startswith("/backend/"):
        assert answer.json()["via"] == "backend-0"


def test_an_allow_policy_without_rules_denies_everything(mesh: RunningMesh) -> None:
    answer = call(mesh, "/locked/anything", {"x-user": "alice"})

    assert answer.status == 403
    assert "by locked-0" in answer.text
    assert "default/locked-down (no rules: allows nothing)" in answer.text


def test_the_gateway_enforces_policies_that_select_it(mesh: RunningMesh) -> None:
    answer = call(mesh, "/blocked-at-edge")

    assert answer.status == 403
    assert answer.text.startswith(
        "RBAC: access denied by ingressgateway: DENY policy istio-system/edge-deny matched"
    )
    # Path normalization: the same path spelled differently is the same path.
    assert call(mesh, "/public/../blocked-at-edge").status == 403


@pytest.mark.parametrize(
    ("path", "headers", "rule"),
    [
        ("/public/page", {"host": "www.Blocked.Example"}, 1),
        ("/not-from-loopback", {}, 2),
    ],
)
def test_hosts_and_ip_blocks_at_the_gateway(
    mesh: RunningMesh, path: str, headers: dict[str, str], rule: int
) -> None:
    answer = call(mesh, path, headers)

    assert answer.status == 403
    assert answer.text.endswith(f"istio-system/edge-deny matched (rules[{rule}])\n")


def test_not_ip_blocks_spare_the_addresses_they_name(mesh: RunningMesh) -> None:
    # Requests come from 127.0.0.1: rule 3 denies everyone else; backend's ALLOW has the say.
    assert call(mesh, "/only-from-loopback", {"x-user": "alice"}).status == 200
    assert call(mesh, "/public/page", {"host": "www.example"}).status == 200


def test_a_forged_x_forwarded_for_is_not_the_client_address_at_the_gateway(
    mesh: RunningMesh,
) -> None:
    """The gateway is the edge: remoteIpBlocks judge the connection's peer (127.0.0.1 here),
    whatever address the client writes into X-Forwarded-For."""
    forged = {"x-forwarded-for": "203.0.113.7"}

    answer = call(mesh, "/backend/public/partners/x", forged)
    assert answer.status == 403
    assert answer.text.startswith("RBAC: access denied by ingressgateway: no ALLOW policy matched")
    assert "istio-system/edge-allow" in answer.text
    answer = call(mesh, "/backend/public/loopback/x", forged)
    assert answer.status == 200, answer.text
    assert answer.json()["replica"] == "backend-0"


# --- RequestAuthentication -------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_valid_token_passes_and_its_claims_reach_the_app(mesh: RunningMesh, keys: Keys) -> None:
    token = keys.main.token({"iss": ISSUER, "sub": "ann", "aud": "web", "group": "admins"})

    answer = call(mesh, "/secure/private/report", bearer(token))

    assert answer.status == 200, answer.text
    seen = answer.json()["headers"]
    assert isinstance(seen, dict)
    assert seen["x-jwt-group"] == "admins"
    assert json.loads(_b64decode(seen["x-jwt-payload"]))["sub"] == "ann"
    # Istio's default: the token itself is not forwarded to the app.
    assert "authorization" not in seen


def test_keys_from_a_jwks_file(mesh: RunningMesh, keys: Keys) -> None:
    token = keys.file.token({"iss": FILE_ISSUER, "sub": "svc", "group": "admins"})

    assert call(mesh, "/secure/private/x", bearer(token)).status == 200


def test_keys_fetched_from_a_mesh_service(mesh: RunningMesh, keys: Keys) -> None:
    token = keys.remote.token({"iss": REMOTE_ISSUER, "sub": "svc", "group": "admins"})

    answer = call(mesh, "/secure/private/x", bearer(token))

    assert answer.status == 200, answer.text
    forged = keys.stranger.token({"iss": REMOTE_ISSUER, "sub": "svc", "group": "admins"})
    assert call(mesh, "/secure/private/x", bearer(forged)).status == 401


def test_keys_fetched_from_a_host_outside_the_mesh(mesh: RunningMesh, keys: Keys) -> None:
    token = keys.outside.token({"iss": OUTSIDE_ISSUER, "sub": "svc", "group": "admins"})

    answer = call(mesh, "/secure/private/x", bearer(token))

    assert answer.status == 200, answer.text


def test_a_missing_token_passes_authentication_but_not_a_policy_that_asks_for_one(
    mesh: RunningMesh,
) -> None:
    assert call(mesh, "/secure/open").status == 200
    denied = call(mesh, "/secure/private/report")
    assert denied.status == 403
    assert "default/secure-needs-token" in denied.text


def test_a_list_claim_matches_when_one_of_its_items_does(mesh: RunningMesh, keys: Keys) -> None:
    claims = {"iss": ISSUER, "sub": "ann", "aud": ["web", "api"], "group": ["users", "admins"]}

    answer = call(mesh, "/secure/private/report", bearer(keys.main.token(claims)))

    assert answer.status == 200, answer.text


def test_a_token_without_the_claim_the_policy_wants_is_denied(
    mesh: RunningMesh, keys: Keys
) -> None:
    token = keys.main.token({"iss": ISSUER, "sub": "ann", "aud": "web", "group": "users"})

    assert call(mesh, "/secure/private/report", bearer(token)).status == 403


@pytest.mark.parametrize(
    ("claims", "lifetime", "signer", "reason"),
    [
        ({"iss": ISSUER, "sub": "a", "aud": "web"}, -600.0, "main", "Jwt is expired"),
        ({"iss": "https://other.test", "sub": "a"}, 3600.0, "main", "issuer is not configured"),
        ({"iss": ISSUER, "sub": "a", "aud": "web"}, 3600.0, "stranger", "Jwt verification fails"),
    ],
    ids=["expired", "wrong-issuer", "bad-signature"],
)
def test_an_invalid_token_gets_401_naming_the_proxy_and_the_reason(
    mesh: RunningMesh,
    keys: Keys,
    claims: dict[str, object],
    lifetime: float,
    signer: str,
    reason: str,
) -> None:
    token = getattr(keys, signer).token(claims, lifetime=lifetime)

    # Even on a path no policy restricts: a token that is present must be valid.
    answer = call(mesh, "/secure/open", bearer(token))

    assert answer.status == 401
    assert answer.text.startswith(
        f"JWT rejected by secure-0 (issuers accepted here: {FILE_ISSUER}, {ISSUER}, "
        f"{OUTSIDE_ISSUER}, {REMOTE_ISSUER}): "
    )
    assert reason in answer.text


def test_a_token_for_another_audience_is_refused(mesh: RunningMesh, keys: Keys) -> None:
    token = keys.main.token({"iss": ISSUER, "sub": "a", "aud": "mobile"})

    answer = call(mesh, "/secure/open", bearer(token))

    assert answer.status in (401, 403)
    assert "Audiences in Jwt are not allowed" in answer.text


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_policies_do_not_reach_workloads_they_do_not_select(tmp_path: Path) -> None:
    """Namespace and selector scope a policy: another namespace's DENY, a DENY for other
    labels and the app namespace's allow-nothing (which Istio's gateway, in the root
    namespace, never sees) change nothing at the gateway (a fresh mesh, one workload)."""
    gateway_port = free_port()
    write_yaml(
        tmp_path / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("backend", "backend", 8080)
        + """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: elsewhere}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-labels}
spec:
  selector: {matchLabels: {app: not-backend}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-anything}
spec:
  selector: {matchLabels: {app: backend}}
  rules: [{to: [{operation: {paths: ["/anything"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: backend}}]}]
""",
    )
    with running_mesh(tmp_path, gateway_port) as running:
        running.wait_serving("/anything")
        denied = call(running, "/elsewhere")
        assert denied.status == 403
        assert "by backend-0" in denied.text
        # The same DENY in the root namespace applies to the whole mesh.
        text = (tmp_path / "mesh.yaml").read_text()
        write_yaml(
            tmp_path / "mesh.yaml",
            text.replace("namespace: elsewhere", "namespace: istio-system"),
        )
        wait_until(lambda: call(running, "/anything").status == 403, 20, "mesh-wide DENY")
        assert "istio-system/other-namespace" in call(running, "/anything").text
