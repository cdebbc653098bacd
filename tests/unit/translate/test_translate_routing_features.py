"""Mirroring, CORS, delegation, source- and binding-dependent matches, gateway merging and
wildcard DestinationRules: what translation emits, and where synthetic requests land."""

from __future__ import annotations

from collections.abc import Mapping

from conftest import http_port, mesh_service, meta, replica, to, view_of
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from route_simulation import SimulatedRequest, simulate_request

from pilotfish.model.destination_rules import DestinationRuleLookup
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    CorsPolicy,
    Delegate,
    Destination,
    DestinationRule,
    Gateway,
    GatewayServer,
    HTTPMatchRequest,
    HTTPRoute,
    MeshConfig,
    MirrorPolicy,
    StringMatch,
    Subset,
    VirtualService,
)
from pilotfish.model.services import MeshView
from pilotfish.snapshot import SnapshotCache, type_urls
from pilotfish.translate import GENERATORS, MeshTranslator, TranslationContext
from pilotfish.translate.routes import CORS_FILTER_NAME

BACKEND = "outbound|8080||backend.default.svc.cluster.local"
FRONTEND = "outbound|8080||frontend.default.svc.cluster.local"
SHADOW = "outbound|8080||shadow.default.svc.cluster.local"


def sidecar(name: str, labels: Mapping[str, str], namespace: str = "default") -> ProxyNode:
    return ProxyNode(
        id=name, namespace=namespace, labels=dict(labels), outbound_port=15001, inbound_port=15006
    )


GATEWAY_NODE = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})


def mesh_of(*virtual_services: VirtualService, **extra: object) -> MeshView:
    config = MeshConfig(virtual_services=virtual_services, **extra)  # type: ignore[arg-type]
    return view_of(
        config,
        mesh_service("frontend", http_port(8080)),
        mesh_service("backend", http_port(8080)),
        mesh_service("shadow", http_port(8080)),
        backend=(replica(8080, 16006, {"app": "backend"}),),
    )


def backend_service(*routes: HTTPRoute, name: str = "backend") -> VirtualService:
    return VirtualService(meta=meta("VirtualService", name), hosts=("backend",), http=routes)


def routes_of(view: MeshView, node: ProxyNode) -> RouteConfiguration:
    """The node's routes without the outbound's CONNECT routes (``test_translate_connect``)."""
    (config,) = MeshTranslator(view).resources_for(node).routes
    for virtual_host in config.virtual_hosts:
        http = [r for r in virtual_host.routes if not r.match.HasField("connect_matcher")]
        del virtual_host.routes[:]
        virtual_host.routes.extend(http)
    return config


def land(view: MeshView, node: ProxyNode, request: SimulatedRequest) -> tuple[str, ...]:
    return simulate_request(routes_of(view, node), request).cluster_names


ANY_SIDECAR = sidecar("frontend-0", {"app": "frontend"})


# --- mirroring ---------------------------------------------------------------------------------


def test_mirrors_copy_to_their_clusters_with_their_percentages() -> None:
    view = mesh_of(
        backend_service(
            HTTPRoute(
                route=(to("backend"),),
                mirrors=(
                    MirrorPolicy(Destination("shadow")),
                    MirrorPolicy(Destination("frontend"), percent=12.5),
                    MirrorPolicy(Destination("shadow"), percent=0.0),
                ),
            )
        )
    )

    outcome = simulate_request(routes_of(view, ANY_SIDECAR), SimulatedRequest("backend:8080"))

    assert outcome.cluster_names == (BACKEND,)
    # Istio: 100% without a percentage, nothing at an explicit 0.
    assert outcome.mirrors == ((SHADOW, 100.0), (FRONTEND, 12.5))
    (route,) = routes_of(view, ANY_SIDECAR).virtual_hosts[0].routes
    assert route.route.request_mirror_policies[0].trace_sampled.value is False


# --- CORS --------------------------------------------------------------------------------------


def test_cors_policy_is_a_per_route_config_of_the_cors_filter() -> None:
    policy = CorsPolicy(
        allow_origins=(StringMatch("exact", "https://a.example"), StringMatch("regex", ".*\\.b")),
        allow_methods=("GET", "POST"),
        allow_headers=("x-a", "x-b"),
        expose_headers=("x-c",),
        max_age=86400.0,
        allow_credentials=False,
        forward_unmatched_preflights=False,
    )
    view = mesh_of(backend_service(HTTPRoute(route=(to("backend"),), cors_policy=policy)))

    (route,) = routes_of(view, ANY_SIDECAR).virtual_hosts[0].routes
    config = cors_pb2.CorsPolicy()
    assert route.typed_per_filter_config[CORS_FILTER_NAME].Unpack(config)

    assert [m.exact or m.safe_regex.regex for m in config.allow_origin_string_match] == [
        "https://a.example",
        ".*\\.b",
    ]
    assert (config.allow_methods, config.allow_headers, config.expose_headers) == (
        "GET,POST",
        "x-a,x-b",
        "x-c",
    )
    assert config.max_age == "86400"
    assert config.HasField("allow_credentials") and not config.allow_credentials.value
    assert config.forward_not_matching_preflights.value is False
    assert config.filter_enabled.default_value.numerator == 100


def test_cors_filter_runs_before_fault_and_router_on_routing_listeners() -> None:
    view = mesh_of()
    listeners = MeshTranslator(view).resources_for(ANY_SIDECAR).listeners
    names = {}
    for listener in listeners:
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        names[listener.name] = [f.name for f in manager.http_filters]
    assert names["outbound"] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]


# --- delegation --------------------------------------------------------------------------------


def test_delegate_routes_take_the_root_routes_place_narrowed_by_its_match() -> None:
    root = backend_service(
        HTTPRoute(
            name="api",
            match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api")),),
            delegate=Delegate("backend-api", "team"),
        ),
        HTTPRoute(name="rest", route=(to("backend"),)),
    )
    delegate = VirtualService(
        meta=meta("VirtualService", "backend-api", namespace="team"),
        hosts=(),
        http=(
            HTTPRoute(
                name="v2",
                match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api/v2")),),
                route=(to("shadow.default.svc.cluster.local"),),
            ),
            # Outside the root's /api: Istio drops it rather than widen the root route.
            HTTPRoute(
                match=(HTTPMatchRequest(uri=StringMatch("prefix", "/other")),),
                route=(to("shadow.default.svc.cluster.local"),),
            ),
            HTTPRoute(name="all", route=(to("frontend.default.svc.cluster.local"),)),
        ),
    )
    view = mesh_of(root, delegate)
    config = routes_of(view, ANY_SIDECAR)

    names = [r.name for r in config.virtual_hosts[0].routes]
    assert names == ["api-v2", "api-all", "rest"]
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", "/api/v2/x")) == (SHADOW,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", "/api/v1")) == (FRONTEND,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", "/other")) == (BACKEND,)


# --- conditions on the caller ------------------------------------------------------------------


def canary_callers_view() -> MeshView:
    return mesh_of(
        backend_service(
            HTTPRoute(
                match=(HTTPMatchRequest(source_labels={"track": "canary"}),),
                route=(to("shadow"),),
            ),
            HTTPRoute(
                match=(HTTPMatchRequest(source_namespace="team"),),
                route=(to("frontend"),),
            ),
            HTTPRoute(route=(to("backend"),)),
        )
    )


def test_source_labels_and_namespace_pick_the_routes_of_each_caller() -> None:
    view = canary_callers_view()
    canary = sidecar("a", {"app": "frontend", "track": "canary"})
    stable = sidecar("b", {"app": "frontend", "track": "stable"})
    elsewhere = sidecar("c", {"app": "frontend"}, namespace="team")
    request = SimulatedRequest("backend:8080")

    assert land(view, canary, request) == (SHADOW,)
    assert land(view, stable, request) == (BACKEND,)
    assert land(view, elsewhere, request) == (FRONTEND,)


def test_sidecars_that_meet_the_same_source_conditions_share_one_route_config() -> None:
    cache = SnapshotCache(GENERATORS, TranslationContext)
    cache.publish(canary_callers_view())
    first = cache.snapshot_for(sidecar("a", {"track": "canary", "app": "x"}))
    second = cache.snapshot_for(sidecar("b", {"track": "canary", "app": "y"}))
    other = cache.snapshot_for(sidecar("c", {"track": "stable"}))
    assert first is not None and second is not None and other is not None

    route = type_urls.ROUTE
    assert first.of_type(route)["outbound"] is second.of_type(route)["outbound"]
    assert other.of_type(route)["outbound"].version != first.of_type(route)["outbound"].version
    assert cache.stats().generators["outbound-routes"].misses == 2


def test_without_source_conditions_every_sidecar_shares_one_route_config() -> None:
    cache = SnapshotCache(GENERATORS, TranslationContext)
    cache.publish(mesh_of(backend_service(HTTPRoute(route=(to("backend"),)))))
    first = cache.snapshot_for(sidecar("a", {"track": "canary"}))
    second = cache.snapshot_for(sidecar("b", {}, namespace="team"))
    assert first is not None and second is not None

    assert first.of_type(type_urls.ROUTE)["outbound"] is second.of_type(type_urls.ROUTE)["outbound"]
    assert cache.stats().generators["outbound-routes"].misses == 1


# --- ports, bindings and request conditions ----------------------------------------------------


def test_a_port_match_applies_only_to_that_port_of_the_service() -> None:
    config = MeshConfig(
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "web"),
                hosts=("web",),
                http=(
                    HTTPRoute(
                        match=(HTTPMatchRequest(port=9090),),
                        route=(to("backend"),),
                    ),
                    HTTPRoute(route=(to("frontend"),)),
                ),
            ),
        )
    )
    view = view_of(
        config,
        mesh_service("web", http_port(80), http_port(9090)),
        mesh_service("frontend", http_port(8080)),
        mesh_service("backend", http_port(8080)),
    )

    assert land(view, ANY_SIDECAR, SimulatedRequest("web:9090")) == (BACKEND,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("web:80")) == (FRONTEND,)


def gateway_view(*virtual_services: VirtualService) -> MeshView:
    gateway = Gateway(
        meta=meta("Gateway", "edge"),
        selector={"istio": "ingressgateway"},
        servers=(GatewayServer(8000, "http", "HTTP", ("*",)),),
    )
    return mesh_of(*virtual_services, gateways=(gateway,))


def test_a_gateways_match_restricts_a_route_to_those_bindings() -> None:
    both = VirtualService(
        meta=meta("VirtualService", "backend"),
        hosts=("backend",),
        gateways=("mesh", "edge"),
        http=(
            HTTPRoute(match=(HTTPMatchRequest(gateways=("edge",)),), route=(to("shadow"),)),
            HTTPRoute(match=(HTTPMatchRequest(gateways=("mesh",)),), route=(to("frontend"),)),
        ),
    )
    view = gateway_view(both)

    assert land(view, ANY_SIDECAR, SimulatedRequest("backend:8080")) == (FRONTEND,)
    assert land(view, GATEWAY_NODE, SimulatedRequest("backend")) == (SHADOW,)


def test_scheme_uri_case_and_absent_headers() -> None:
    view = mesh_of(
        backend_service(
            HTTPRoute(
                match=(HTTPMatchRequest(scheme=StringMatch("exact", "https")),),
                route=(to("shadow"),),
            ),
            HTTPRoute(
                match=(
                    HTTPMatchRequest(uri=StringMatch("prefix", "/Admin"), ignore_uri_case=True),
                ),
                route=(to("frontend"),),
            ),
            HTTPRoute(
                match=(HTTPMatchRequest(without_headers={"x-debug": StringMatch("exact", "1")}),),
                route=(to("backend"),),
            ),
        )
    )

    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", scheme="https")) == (SHADOW,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", "/aDMIN/x")) == (FRONTEND,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", "/")) == (BACKEND,)
    assert land(view, ANY_SIDECAR, SimulatedRequest("backend", headers={"x-debug": "2"})) == (
        BACKEND,
    )
    debugging = simulate_request(
        routes_of(view, ANY_SIDECAR), SimulatedRequest("backend", headers={"x-debug": "1"})
    )
    assert debugging.status == 404


# --- gateways merge VirtualServices --------------------------------------------------------------


def test_virtual_services_for_one_host_on_a_gateway_are_merged_in_order() -> None:
    first = VirtualService(
        meta=meta("VirtualService", "api"),
        hosts=("shop.example.com",),
        gateways=("edge",),
        http=(
            HTTPRoute(
                match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api")),),
                route=(to("backend"),),
            ),
        ),
    )
    second = VirtualService(
        meta=meta("VirtualService", "site"),
        hosts=("shop.example.com", "other.example.com"),
        gateways=("edge",),
        http=(HTTPRoute(route=(to("frontend"),)),),
    )
    view = gateway_view(first, second)
    (config,) = MeshTranslator(view).resources_for(GATEWAY_NODE).routes

    merged = next(v for v in config.virtual_hosts if "shop.example.com" in v.domains)
    assert merged.name == "default/api+default/site"
    assert land(view, GATEWAY_NODE, SimulatedRequest("shop.example.com", "/api/x")) == (BACKEND,)
    assert land(view, GATEWAY_NODE, SimulatedRequest("shop.example.com", "/")) == (FRONTEND,)
    assert land(view, GATEWAY_NODE, SimulatedRequest("other.example.com", "/api")) == (FRONTEND,)


# --- wildcard DestinationRules -----------------------------------------------------------------


def rule(name: str, host: str, subset: str) -> DestinationRule:
    return DestinationRule(meta=meta("DestinationRule", name), host=host, subsets=(Subset(subset),))


def test_the_most_specific_destination_rule_host_wins() -> None:
    broad = rule("broad", "*.example.com", "broad")
    narrow = rule("narrow", "*.shop.example.com", "narrow")
    exact = rule("exact", "cart.shop.example.com", "exact")
    lookup = DestinationRuleLookup([broad, narrow, exact])

    assert lookup.rule_for("cart.shop.example.com") is exact
    assert lookup.rule_for("pay.shop.example.com") is narrow
    assert lookup.rule_for("www.example.com") is broad
    assert lookup.rule_for("example.com") is None


def test_a_wildcard_destination_rule_makes_subset_clusters_for_the_services_it_matches() -> None:
    config = MeshConfig(destination_rules=(rule("all", "*.svc.cluster.local", "v1"),))
    view = view_of(config, mesh_service("backend", http_port(8080)))

    names = {c.name for c in MeshTranslator(view).resources_for(sidecar("a", {})).clusters}

    assert "outbound|8080|v1|backend.default.svc.cluster.local" in names


def test_the_sidecar_group_key_tells_which_sidecars_share_routes() -> None:
    context = TranslationContext(canary_callers_view())
    canary = sidecar("a", {"track": "canary"})

    assert context.sidecar_group(canary) == (True, False)
    assert context.sidecar_group(sidecar("b", {}, namespace="team")) == (False, True)
    assert TranslationContext(mesh_of()).sidecar_group(canary) == ()
