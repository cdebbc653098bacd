"""The snapshot cache over the real generators: a new generation rebuilds exactly what its
change can have touched, and says what a fresh translation says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.discovery import InMemoryRegistry, build_view
from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import LocalityLbSetting, OutlierDetection
from pilotfish.model.resources import (
    Destination,
    Gateway,
    GatewayServer,
    HTTPRoute,
    LoadBalancer,
    MeshConfig,
    RouteDestination,
    ServicePort,
    TrafficPolicy,
    VirtualService,
)
from pilotfish.model.security import ServerTLSSettings
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.snapshot import Snapshot, SnapshotCache, make_snapshot, type_urls
from pilotfish.translate import GENERATORS, MeshTranslator, TranslationContext

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, port: 8080, command: [web]}
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: api}
spec: {service: api, port: 9090, command: [api], labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec: {host: api, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: search}
spec:
  hosts: [search.example.com]
  resolution: DNS
  ports: [{number: 443, name: http, protocol: HTTP}]
"""
WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
SIDECAR = ProxyNode(id="web-0", service="web", outbound_port=1, inbound_port=2, app_port=3)


def config_of(text: str = MESH) -> MeshConfig:
    result = load_text(text, "mesh.yaml", directory=Path("/tmp"))
    assert result.config is not None, result.diagnostics
    return result.config


def endpoint(port: int, version: str = "v1") -> Endpoint:
    return Endpoint("127.0.0.1", {9090: port, 8080: port}, {"version": version}, name=str(port))


def new_cache() -> SnapshotCache[TranslationContext]:
    return SnapshotCache(GENERATORS, TranslationContext)


def versions(snapshot: Snapshot | None) -> dict[str, dict[str, str]]:
    assert snapshot is not None
    return {
        t: {n: r.version for n, r in named.items()}
        for t, named in snapshot.resources.items()
        if named
    }


def fresh(view: MeshView, node: ProxyNode) -> dict[str, dict[str, str]]:
    return versions(make_snapshot(MeshTranslator(view).resources_for(node)))


def misses(cache: SnapshotCache[TranslationContext]) -> dict[str, int]:
    return {name: s.misses for name, s in cache.stats().generators.items()}


def built_since(cache: SnapshotCache[TranslationContext], before: dict[str, int]) -> dict[str, int]:
    return {
        name: count - before[name] for name, count in misses(cache).items() if count > before[name]
    }


def test_an_endpoint_change_rebuilds_only_that_services_outputs() -> None:
    config = config_of()
    cache = new_cache()
    cache.publish(build_view(config, {API: [endpoint(7001)], WEB: [endpoint(7100)]}))
    first = cache.snapshot_for(SIDECAR)
    before = misses(cache)
    view = build_view(config, {API: [endpoint(7001), endpoint(7002)], WEB: [endpoint(7100)]})
    cache.publish(view)
    second = cache.snapshot_for(SIDECAR)

    # api's clusters and assignments; routes, listeners and other services are kept. The
    # locality-aware assignments (none here) follow every endpoint change.
    assert built_since(cache, before) == {
        "outbound-clusters": 1,
        "load-assignments": 1,
        "locality-load-assignments": 1,
    }
    assert first is not None and second is not None
    assert second.of_type(type_urls.ROUTE) is first.of_type(type_urls.ROUTE)
    assert second.of_type(type_urls.LISTENER) is first.of_type(type_urls.LISTENER)
    assert second.changed_names(first, type_urls.ENDPOINT) == (
        f"outbound|9090||{API}",
        f"outbound|9090|v1|{API}",
    )
    assert second.changed_names(first, type_urls.CLUSTER) == ()
    assert versions(second) == fresh(view, SIDECAR)


def test_a_config_change_rebuilds_what_depends_on_config() -> None:
    cache = new_cache()
    cache.publish(build_view(config_of(), {API: [endpoint(7001)]}))
    cache.snapshot_for(SIDECAR)
    before = misses(cache)
    edited = config_of(MESH.replace("port: 9090", "port: 9191"))
    view = build_view(edited, {API: [endpoint(7001)]})
    cache.publish(view)
    snapshot = cache.snapshot_for(SIDECAR)
    assert built_since(cache, before) == {
        "outbound-clusters": 3,
        "jwks-clusters": 1,
        "load-assignments": 3,
        "locality-load-assignments": 1,
        "outbound-routes": 1,
        # The outbound listener reads the mesh's telemetry settings; rebuilt, it packs to
        # the same bytes and version when they did not change, so nothing is sent.
        "outbound-listener": 1,
        # One for every explicit sidecar (empty), one for each transparent one.
        "transparent-outbound-listener": 1,
        "inbound-listener": 1,
        # The service's DestinationRule may set the server side's connection pool.
        "inbound-cluster": 1,
        # Its upstream ports (none here) follow their routes.
        "upstream-listeners": 1,
    }
    assert versions(snapshot) == fresh(view, SIDECAR)


def test_dns_clusters_carry_endpoints_so_their_change_rebuilds_clusters() -> None:
    config = config_of()
    search = "search.example.com"
    cache = new_cache()
    cache.publish(build_view(config, {search: [Endpoint("a.example.com", {443: 443})]}))
    first = cache.snapshot_for(SIDECAR)
    view = build_view(config, {search: [Endpoint("b.example.com", {443: 443})]})
    cache.publish(view)
    second = cache.snapshot_for(SIDECAR)
    assert first is not None and second is not None
    assert second.changed_names(first, type_urls.CLUSTER) == (f"outbound|443||{search}",)
    assert versions(second) == fresh(view, SIDECAR)


def test_proxies_of_a_kind_share_one_layer_and_build_only_their_own() -> None:
    cache = new_cache()
    cache.publish(build_view(config_of(), {API: [endpoint(7001)]}))
    one = cache.snapshot_for(SIDECAR)
    before = misses(cache)
    other = ProxyNode(id="api-0", service="api", outbound_port=4, inbound_port=5, app_port=6)
    two = cache.snapshot_for(other)
    assert built_since(cache, before) == {
        "inbound-cluster": 1,
        "outbound-listener": 1,
        "inbound-listener": 1,
    }
    assert one is not None and two is not None
    route = type_urls.ROUTE
    assert one.of_type(route)["outbound"] is two.of_type(route)["outbound"]  # one output
    assert one.of_type(type_urls.ENDPOINT) is two.of_type(type_urls.ENDPOINT)


def test_two_caches_share_nothing() -> None:
    """No state outside the cache object: two control planes in one process are separate."""
    view = build_view(config_of(), {API: [endpoint(7001)]})
    first, second = new_cache(), new_cache()
    first.publish(view)
    first.snapshot_for(SIDECAR)
    second.publish(view)
    second.snapshot_for(SIDECAR)
    assert misses(first) == misses(second)
    assert first.stats().packing_misses == second.stats().packing_misses > 0


def test_outputs_nobody_uses_any_more_are_dropped() -> None:
    cache = new_cache()
    config = config_of()
    for port in range(7001, 7011):
        cache.publish(build_view(config, {API: [endpoint(port)]}))
        cache.snapshot_for(SIDECAR)
    # Two generations' worth at most: web's and search's outputs, and api's last two; plus
    # one (empty) transparent outbound listener and one transparent-clusters output.
    assert cache.stats().entries <= 2 * 4 + 2 * 2 + 3 + 2


HOSTS = (WEB, API, "search.example.com")
GATEWAY = ProxyNode(id="gw", kind="gateway")
any_endpoint = st.builds(
    lambda port, version, weight, account, locality: Endpoint(
        "127.0.0.1",
        {9090: port, 8080: port, 443: port},
        {"version": version},
        weight,
        str(port),
        account,
        locality,
    ),
    st.integers(1000, 1003),
    st.sampled_from(["v1", "v2"]),
    st.integers(1, 2),
    # Whether a sidecar serves it, and as whom: auto mTLS and the SANs clients expect.
    st.sampled_from([None, "api", "other"]),
    st.sampled_from([None, "r1/za", "r1/zb"]),
)
any_registry = st.fixed_dictionaries({h: st.lists(any_endpoint, max_size=2) for h in HOSTS})
EDITED = MESH.replace(
    "subsets: [{name: v1", "subsets: [{name: v2, labels: {version: v2}}, {name: v1"
)
SECURED = (
    EDITED.replace(
        "spec: {host: api, subsets:",
        "spec: {host: api, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}, subsets:",
    )
    + """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec: {mtls: {mode: STRICT}}
---
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: example.org}
"""
)


def registry_with(services: int) -> InMemoryRegistry:
    """A registry declaring ``services`` services of its own (beyond the config's)."""
    registry = InMemoryRegistry()
    for index in range(services):
        hostname = f"extra-{index}.default.svc.cluster.local"
        registry.set_service(Service(hostname, (ServicePort(80, "http", "HTTP"),)))
    return registry


# Policies for the sidecar and (mesh-wide) the gateway; keys from a host that is a mesh
# service only while the registry declares it, so which clusters exist depends on services.
AUTHORIZED = (
    MESH
    + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: tokens}
spec:
  jwtRules:
  - {issuer: a, jwksUri: "http://extra-0.default.svc.cluster.local:80/keys"}
"""
)


# An edge whose port 443 has two TLS servers and a plaintext one (a route config each), on top
# of MESH; built from the model, since the loader would look for the certificate files.
EDGE = "edge"


def edge_config() -> MeshConfig:
    config = config_of(MESH)
    meta = replace(config.workloads[0].meta, kind="Gateway", name="edge")
    simple = ServerTLSSettings("SIMPLE", "/c/web.pem", "/c/web-key.pem")
    mutual = ServerTLSSettings("MUTUAL", "/c/api.pem", "/c/api-key.pem", "/c/clients.pem")
    servers = (
        GatewayServer(443, "web", "HTTP", ("web.example.com",), tls=simple),
        GatewayServer(443, "api", "HTTP", ("api.example.com",), tls=mutual),
        GatewayServer(443, "plain", "HTTP", ("plain.example.com",)),
        GatewayServer(80, "http", "HTTP", ("*",), https_redirect=True),
    )
    route = VirtualService(
        replace(meta, kind="VirtualService"),
        hosts=("web.example.com", "api.example.com", "plain.example.com", "*"),
        gateways=("edge",),
        http=(HTTPRoute(route=(RouteDestination(Destination("api")),)),),
    )
    return replace(config, gateways=(Gateway(meta, {}, servers),), virtual_services=(route,))


# Locality failover on api (its assignments then depend on the caller's locality), by
# outlier detection, and a failoverPriority label; built from the model like the edge.
LOCALITY = "locality"
LOCAL_SIDECAR = replace(SIDECAR, id="web-1", locality="r1/za", labels={"version": "v2"})


def locality_config() -> MeshConfig:
    config = config_of(EDITED)
    balancer = LoadBalancer(locality_lb_setting=LocalityLbSetting(failover_priority=("version",)))
    policy = TrafficPolicy(
        load_balancer=balancer, outlier_detection=OutlierDetection(consecutive_5xx_errors=1)
    )
    (rule,) = config.destination_rules
    return replace(config, destination_rules=(replace(rule, traffic_policy=policy),))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            any_registry,
            st.sampled_from([MESH, EDITED, SECURED, AUTHORIZED, EDGE, LOCALITY]),
            st.integers(0, 2),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_chain_of_generations_says_what_a_fresh_translation_says(
    generations: list[tuple[dict[str, list[Endpoint]], str, int, bool]],
) -> None:
    configs = {text: config_of(text) for text in (MESH, EDITED, SECURED, AUTHORIZED)}
    configs[EDGE] = edge_config()
    configs[LOCALITY] = locality_config()
    registries = [registry_with(count) for count in range(3)]
    cache = new_cache()
    view = None
    for endpoints, text, extra, asked in generations:
        view = build_view(configs[text], endpoints, [registries[extra]])
        cache.publish(view)
        if asked:  # only what a proxy asked for gets built, and so can be reused later
            for node in (SIDECAR, GATEWAY, LOCAL_SIDECAR):
                assert versions(cache.snapshot_for(node)) == fresh(view, node)
    assert view is not None
    for node in (SIDECAR, LOCAL_SIDECAR):
        assert versions(cache.snapshot_for(node)) == fresh(view, node)


def test_the_edge_config_gives_the_gateway_a_route_config_per_chain() -> None:
    """So the property above covers a gateway with TLS servers sharing a port."""
    view = build_view(edge_config(), {}, [])
    routes = fresh(view, GATEWAY)[type_urls.ROUTE]
    assert sorted(routes) == [
        "http.443",
        "http.80",
        "https.443.default/edge.0",
        "https.443.default/edge.1",
    ]


SOURCE_ROUTES = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - match: [{sourceLabels: {app: web}}]
    route: [{destination: {host: api, subset: v1}}]
  - route: [{destination: {host: api}}]
"""


def test_an_endpoint_change_keeps_the_routes_of_every_source_group() -> None:
    config = config_of(MESH + SOURCE_ROUTES)
    web = ProxyNode(id="web-0", labels={"app": "web"}, outbound_port=1)
    other = ProxyNode(id="other-0", labels={"app": "other"}, outbound_port=1)
    other_web = ProxyNode(id="web-1", labels={"app": "web"}, outbound_port=2)
    cache = new_cache()
    cache.publish(build_view(config, {API: [endpoint(7001)]}))
    first = {n.id: cache.snapshot_for(n) for n in (web, other, other_web)}
    routes = {i: s.of_type(type_urls.ROUTE)["outbound"] for i, s in first.items() if s}
    assert routes["web-0"].version != routes["other-0"].version
    assert routes["web-0"] is routes["web-1"]  # one group, one output
    assert misses(cache)["outbound-routes"] == 2

    cache.publish(build_view(config, {API: [endpoint(7001), endpoint(7002)]}))
    for node in (web, other, other_web):
        snapshot = cache.snapshot_for(node)
        assert snapshot is not None
        assert snapshot.of_type(type_urls.ROUTE)["outbound"] is routes[node.id]
    assert misses(cache)["outbound-routes"] == 2
