"""A translator built from the previous one reuses what the change cannot have touched."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.discovery import build_view
from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import Endpoint
from pilotfish.translate import MeshTranslator

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


def serialized(translator: MeshTranslator) -> list[bytes]:
    resources = translator.resources_for(SIDECAR)
    messages = (*resources.clusters, *resources.load_assignments, *resources.routes)
    return [m.SerializeToString(deterministic=True) for m in messages]


def test_an_endpoint_change_rebuilds_only_that_services_assignments() -> None:
    config = config_of()
    first = MeshTranslator(build_view(config, {API: [endpoint(7001)], WEB: [endpoint(7100)]}))
    first.resources_for(SIDECAR)
    view = build_view(config, {API: [endpoint(7001), endpoint(7002)], WEB: [endpoint(7100)]})
    second = MeshTranslator(view, first)

    assert second.outbound_clusters is first.outbound_clusters
    assert second.outbound_route_config is first.outbound_route_config
    old = {cla.cluster_name: cla for cla in first.load_assignments}
    new = {cla.cluster_name: cla for cla in second.load_assignments}
    assert new[f"outbound|8080||{WEB}"] is old[f"outbound|8080||{WEB}"]
    changed = new[f"outbound|9090|v1|{API}"]
    assert changed is not old[f"outbound|9090|v1|{API}"]
    assert len(changed.endpoints[0].lb_endpoints) == 2
    assert serialized(second) == serialized(MeshTranslator(view))


def test_a_config_change_reuses_nothing() -> None:
    first = MeshTranslator(build_view(config_of(), {API: [endpoint(7001)]}))
    first.resources_for(SIDECAR)
    edited = config_of(MESH.replace("port: 9090", "port: 9191"))
    second = MeshTranslator(build_view(edited, {API: [endpoint(7001)]}), first)
    assert second.outbound_clusters is not first.outbound_clusters
    assert second.outbound_route_config is not first.outbound_route_config
    assert serialized(second) == serialized(
        MeshTranslator(build_view(edited, {API: [endpoint(7001)]}))
    )


def test_dns_clusters_carry_endpoints_so_their_change_rebuilds_clusters() -> None:
    config = config_of()
    search = "search.example.com"
    first = MeshTranslator(build_view(config, {search: [Endpoint("a.example.com", {443: 443})]}))
    first.resources_for(SIDECAR)
    view = build_view(config, {search: [Endpoint("b.example.com", {443: 443})]})
    second = MeshTranslator(view, first)
    assert second.outbound_clusters is not first.outbound_clusters
    assert serialized(second) == serialized(MeshTranslator(view))


HOSTS = (WEB, API, "search.example.com")
GATEWAY = ProxyNode(id="gw", kind="gateway")
any_endpoint = st.builds(
    lambda port, version, weight: Endpoint(
        "127.0.0.1", {9090: port, 8080: port, 443: port}, {"version": version}, weight, str(port)
    ),
    st.integers(1000, 1003),
    st.sampled_from(["v1", "v2"]),
    st.integers(1, 2),
)
any_registry = st.fixed_dictionaries({h: st.lists(any_endpoint, max_size=2) for h in HOSTS})


def everything(translator: MeshTranslator, node: ProxyNode) -> list[bytes]:
    resources = translator.resources_for(node)
    messages = (
        *resources.clusters,
        *resources.load_assignments,
        *resources.listeners,
        *resources.routes,
    )
    return [m.SerializeToString(deterministic=True) for m in messages]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(any_registry, st.booleans()), min_size=1, max_size=6))
def test_a_chain_of_translators_says_what_a_fresh_one_says(
    generations: list[tuple[dict[str, list[Endpoint]], bool]],
) -> None:
    config = config_of()
    previous: MeshTranslator | None = None
    for endpoints, asked in generations:
        view = build_view(config, endpoints)
        chained = MeshTranslator(view, previous)
        if asked:  # only what a proxy asked for gets built, and so can be reused later
            for node in (SIDECAR, GATEWAY):
                assert everything(chained, node) == everything(MeshTranslator(view), node)
        previous = chained
    assert previous is not None
    assert everything(previous, SIDECAR) == everything(MeshTranslator(view), SIDECAR)


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
    first = MeshTranslator(build_view(config, {API: [endpoint(7001)]}))
    web_routes = first.resources_for(web).routes
    other_routes = first.resources_for(other).routes
    assert web_routes != other_routes

    second = MeshTranslator(build_view(config, {API: [endpoint(7001), endpoint(7002)]}), first)

    assert second.resources_for(web).routes[0] is web_routes[0]
    assert second.resources_for(other).routes[0] is other_routes[0]
    # The shared part is per group, and new per generation (its assignments changed).
    assert second.shared_for(web) is not first.shared_for(web)
    assert second.shared_for(web) is not second.shared_for(other)
