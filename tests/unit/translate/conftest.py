"""Small meshes built straight from domain types, one per translation feature under test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from pilotfish.load import load_texts
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    ConsistentHash,
    Destination,
    DestinationRule,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    Gateway,
    GatewayServer,
    HeaderOperations,
    Headers,
    HTTPCookie,
    HTTPMatchRequest,
    HTTPRoute,
    LoadBalancer,
    MeshConfig,
    Meta,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    ServiceEntry,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from pilotfish.model.services import Endpoint, MeshView, Service

BY_SOURCE_IP = ConsistentHash(use_source_ip=True)
JASON = HTTPMatchRequest(headers={"end-user": StringMatch("exact", "jason")})
FRONTEND = "frontend.default.svc.cluster.local"
BACKEND = "backend.default.svc.cluster.local"


def meta(kind: str, name: str, namespace: str = "default") -> Meta:
    return Meta(kind=kind, name=name, namespace=namespace, source=SourceMap(f"{name}.yaml"))


def mesh_service(short: str, *ports: ServicePort, namespace: str = "default") -> Service:
    return Service(
        hostname=f"{short}.{namespace}.svc.cluster.local",
        ports=ports,
        namespace=namespace,
        short_name=short,
    )


def http_port(number: int, protocol: str = "HTTP") -> ServicePort:
    return ServicePort(number=number, name=protocol.lower(), protocol=protocol)  # type: ignore[arg-type]


def to(host: str, subset: str | None = None, weight: int | None = None) -> RouteDestination:
    return RouteDestination(destination=Destination(host=host, subset=subset), weight=weight)


def replica(port: int, inbound: int, labels: Mapping[str, str]) -> Endpoint:
    return Endpoint(address="127.0.0.1", ports={port: inbound}, labels=dict(labels))


def view_of(config: MeshConfig, *services: Service, **endpoints: tuple[Endpoint, ...]) -> MeshView:
    by_host = {s.hostname: s for s in services}
    return MeshView(
        config=config,
        services=by_host,
        endpoints={
            host: endpoints.get(by_host[host].short_name or "", ()) for host in sorted(by_host)
        },
    )


def quickstart_config() -> MeshConfig:
    """frontend calls backend; jason goes to v2, everyone else 90/10 between v1 and v2."""
    return MeshConfig(
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "backend"),
                host="backend",
                subsets=(Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"})),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "backend"),
                hosts=("backend",),
                http=(
                    HTTPRoute(
                        name="jason",
                        match=(
                            HTTPMatchRequest(headers={"end-user": StringMatch("exact", "jason")}),
                        ),
                        route=(to("backend", "v2"),),
                    ),
                    HTTPRoute(
                        name="split",
                        route=(to("backend", "v1", 90), to("backend", "v2", 10)),
                        retries=Retries(attempts=3, per_try_timeout=2.0, retry_on="5xx,503"),
                        timeout=5.0,
                    ),
                ),
            ),
        ),
    )


@pytest.fixture
def quickstart_view() -> MeshView:
    return view_of(
        quickstart_config(),
        mesh_service("frontend", http_port(8080)),
        mesh_service("backend", http_port(8080)),
        frontend=(replica(8080, 15006, {"app": "frontend"}),),
        backend=(
            replica(8080, 16006, {"app": "backend", "version": "v1"}),
            replica(8080, 17006, {"app": "backend", "version": "v2"}),
        ),
    )


@pytest.fixture
def frontend_sidecar() -> ProxyNode:
    return ProxyNode(
        id="frontend-0",
        service="frontend",
        labels={"app": "frontend"},
        outbound_port=15001,
        inbound_port=15006,
        app_port=8080,
    )


@pytest.fixture
def ingress_gateway() -> ProxyNode:
    return ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})


@pytest.fixture
def gateway_view() -> MeshView:
    config = MeshConfig(
        gateways=(
            Gateway(
                meta=meta("Gateway", "web"),
                selector={"istio": "ingressgateway"},
                servers=(
                    GatewayServer(port=8000, port_name="http", protocol="HTTP", hosts=("*",)),
                    GatewayServer(
                        port=8001, port_name="shop", protocol="HTTP", hosts=("shop.example.com",)
                    ),
                ),
            ),
            Gateway(
                meta=meta("Gateway", "elsewhere"),
                selector={"istio": "egressgateway"},
                servers=(GatewayServer(9000, "http", "HTTP", ("*",)),),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "site"),
                hosts=("*",),
                gateways=("web",),
                http=(
                    HTTPRoute(
                        match=(
                            HTTPMatchRequest(uri=StringMatch("exact", "/login")),
                            HTTPMatchRequest(uri=StringMatch("prefix", "/static")),
                        ),
                        route=(to("frontend"),),
                    ),
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api/")),),
                        rewrite=Rewrite(uri="/"),
                        route=(to("backend"),),
                    ),
                ),
            ),
            VirtualService(
                meta=meta("VirtualService", "shop"),
                hosts=("shop.example.com", "blocked.example.com"),
                gateways=("default/web", "mesh"),
                http=(HTTPRoute(route=(to("frontend"),)),),
            ),
        ),
    )
    return view_of(
        config,
        mesh_service("frontend", http_port(8080)),
        mesh_service("backend", http_port(8080)),
        frontend=(replica(8080, 15006, {"app": "frontend"}),),
        backend=(replica(8080, 16006, {"app": "backend"}),),
    )


@pytest.fixture
def service_entry_view() -> MeshView:
    static_entry = ServiceEntry(
        meta=meta("ServiceEntry", "payments"),
        hosts=("payments.example.com",),
        ports=(http_port(443, "HTTP2"),),
        resolution="STATIC",
    )
    dns_entry = ServiceEntry(
        meta=meta("ServiceEntry", "httpbin"),
        hosts=("httpbin.org",),
        ports=(http_port(80),),
        resolution="DNS",
    )
    payments = Service(hostname="payments.example.com", ports=static_entry.ports, external=True)
    httpbin = Service(
        hostname="httpbin.org", ports=dns_entry.ports, resolution="DNS", external=True
    )
    return MeshView(
        config=MeshConfig(service_entries=(static_entry, dns_entry)),
        services={payments.hostname: payments, httpbin.hostname: httpbin},
        endpoints={
            payments.hostname: (
                Endpoint(address="10.0.0.1", ports={443: 8443}, weight=3),
                Endpoint(address="10.0.0.2", ports={443: 8443}),
            ),
            httpbin.hostname: (),
        },
    )


@pytest.fixture
def consistent_hash_view() -> MeshView:
    config = MeshConfig(
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "cart"),
                host="cart.default.svc.cluster.local",
                traffic_policy=TrafficPolicy(
                    LoadBalancer(consistent_hash=ConsistentHash(http_header_name="x-user"))
                ),
                subsets=(
                    Subset(
                        "sticky",
                        {"track": "sticky"},
                        TrafficPolicy(
                            LoadBalancer(
                                consistent_hash=ConsistentHash(
                                    http_cookie=HTTPCookie("session", ttl=60.0, path="/")
                                )
                            )
                        ),
                    ),
                    Subset("by-ip", {}, TrafficPolicy(LoadBalancer(consistent_hash=BY_SOURCE_IP))),
                    Subset("plain", {}, TrafficPolicy(LoadBalancer(simple="RANDOM"))),
                ),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "cart"),
                hosts=("cart",),
                http=(
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/sticky")),),
                        route=(to("cart", "sticky", 50), to("cart", "by-ip", 50)),
                    ),
                    HTTPRoute(route=(to("cart"),)),
                ),
            ),
        ),
    )
    return view_of(
        config,
        mesh_service("cart", http_port(80, "GRPC")),
        cart=(
            replica(80, 15006, {"track": "sticky"}),
            replica(80, 16006, {"track": "stable"}),
        ),
    )


@pytest.fixture
def fault_view() -> MeshView:
    config = MeshConfig(
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "ratings"),
                hosts=("ratings",),
                http=(
                    HTTPRoute(
                        match=(JASON,),
                        fault=Fault(delay=FaultDelay(fixed_delay=7.0, percent=100.0)),
                        route=(to("ratings"),),
                    ),
                    HTTPRoute(
                        fault=Fault(abort=FaultAbort(http_status=500, percent=0.1)),
                        route=(to("ratings"),),
                        retries=Retries(attempts=0),
                    ),
                ),
            ),
        ),
    )
    return view_of(
        config,
        mesh_service("ratings", http_port(9080)),
        ratings=(replica(9080, 15006, {"app": "ratings"}),),
    )


@pytest.fixture
def routing_features_view() -> MeshView:
    """Every route action and matcher kind, a multi-port service and a broken destination."""
    config = MeshConfig(
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "web"),
                hosts=("web",),
                http=(
                    HTTPRoute(
                        name="old-docs",
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/old")),),
                        redirect=Redirect("/docs", "docs.example.com", redirect_code=308),
                    ),
                    HTTPRoute(
                        name="health",
                        match=(HTTPMatchRequest(uri=StringMatch("exact", "/healthz")),),
                        direct_response=DirectResponse(status=200, body="ok\n"),
                    ),
                    HTTPRoute(
                        name="admin",
                        match=(
                            HTTPMatchRequest(
                                uri=StringMatch("regex", "/admin/[a-z]+"),
                                method=StringMatch("exact", "POST"),
                                authority=StringMatch("prefix", "web"),
                                query_params={"debug": StringMatch("exact", "1")},
                                headers={"x-team": StringMatch("regex", "ops|sre")},
                            ),
                        ),
                        rewrite=Rewrite(uri="/internal/admin", authority="admin.internal"),
                        route=(to("web"),),
                    ),
                    HTTPRoute(
                        name="missing",
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/gone")),),
                        route=(to("nowhere"),),
                    ),
                    HTTPRoute(
                        name="decorated",
                        headers=Headers(
                            request=HeaderOperations({"x-mesh": "pilotfish"}, remove=("x-debug",)),
                            response=HeaderOperations(add={"x-served-by": "web"}),
                        ),
                        route=(
                            RouteDestination(
                                destination=Destination(host="web", port=9090),
                                headers=Headers(request=HeaderOperations(set={"x-port": "9090"})),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    return view_of(
        config,
        mesh_service("web", http_port(80), http_port(9090, "GRPC")),
        web=(Endpoint(address="127.0.0.1", ports={80: 15006, 9090: 15006}),),
    )


AUTHORIZATION_POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: frontend}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], notMethods: [GET]}}]
  - from: [{source: {notNamespaces: [prod], ipBlocks: ["10.0.0.0/8"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: callers}
spec:
  selector: {matchLabels: {app: frontend}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/gateway", "*-admin"]}}]
    to: [{operation: {hosts: ["*.example"], ports: ["8080"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: [staff]}
    - {key: "request.headers[x-tenant]", notValues: ["blocked*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["*.php"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: tokens}
spec:
  selector: {matchLabels: {app: frontend}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [frontend]
    jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": "AA", "y": "AA"}]}'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
  - issuer: https://backend.example
    jwksUri: http://backend.default.svc.cluster.local:8080/jwks
  - issuer: https://accounts.example.com
    jwksUri: https://accounts.example.com/oauth2/v3/certs
"""


@pytest.fixture
def authorization_view(quickstart_view: MeshView) -> MeshView:
    loaded = load_texts(
        [("policies.yaml", AUTHORIZATION_POLICIES)], known_services=quickstart_view.services
    )
    assert loaded.config is not None, loaded.diagnostics
    config = replace(
        quickstart_view.config,
        authorization_policies=loaded.config.authorization_policies,
        request_authentications=loaded.config.request_authentications,
    )
    return replace(quickstart_view, config=config)
