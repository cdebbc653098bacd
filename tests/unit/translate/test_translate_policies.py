"""Focused checks of translation rules that golden files would only show implicitly."""

from __future__ import annotations

from collections import Counter

from envoy.config.cluster.v3 import cluster_pb2
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    Destination,
    DestinationRule,
    LoadBalancer,
    MeshConfig,
    Meta,
    Retries,
    ServicePort,
    Subset,
    TrafficPolicy,
)
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate.clusters import build_outbound_clusters, lb_policy_for
from pilotfish.translate.destinations import ClusterTarget, DestinationIndex, Unroutable
from pilotfish.translate.endpoints import build_load_assignments
from pilotfish.translate.listeners import (
    build_gateway_listeners,
    build_inbound_listener,
    build_outbound_listener,
)
from pilotfish.translate.routes import build_outbound_route_config, retry_policy


def test_retry_codes_go_to_status_codes_and_names_to_retry_on() -> None:
    policy = retry_policy(
        Retries(attempts=4, per_try_timeout=0.25, retry_on="gateway-error,503, 429")
    )

    assert policy is not None
    assert policy.retry_on == "gateway-error,retriable-status-codes"
    assert list(policy.retriable_status_codes) == [503, 429]
    assert policy.num_retries.value == 4
    assert policy.per_try_timeout.ToMilliseconds() == 250


def test_no_retries_means_istio_defaults_and_zero_attempts_means_none() -> None:
    default = retry_policy(None)

    assert default is not None
    assert default.num_retries.value == 2
    assert list(default.retriable_status_codes) == [503]
    assert "connect-failure" in default.retry_on
    assert retry_policy(Retries(attempts=0)) is None


def test_default_load_balancer_is_istios_least_request() -> None:
    assert lb_policy_for(None) == cluster_pb2.Cluster.LEAST_REQUEST
    assert lb_policy_for(LoadBalancer(simple="RANDOM")) == cluster_pb2.Cluster.RANDOM


def _reviews_view() -> MeshView:
    service = Service(
        "reviews.default.svc.cluster.local", (ServicePort(9080, "http"),), short_name="reviews"
    )
    rule = DestinationRule(
        meta=Meta("DestinationRule", "reviews", "default", SourceMap("reviews.yaml")),
        host="reviews",
        traffic_policy=TrafficPolicy(LoadBalancer(simple="ROUND_ROBIN")),
        subsets=(
            Subset("v1", {"version": "v1"}),
            Subset("v2", {"version": "v2"}, TrafficPolicy(LoadBalancer(simple="RANDOM"))),
        ),
    )
    return MeshView(
        config=MeshConfig(destination_rules=(rule,)),
        services={service.hostname: service},
        endpoints={
            service.hostname: (
                Endpoint("127.0.0.1", {9080: 20001}, {"version": "v1"}),
                Endpoint("127.0.0.1", {9080: 20002}, {"version": "v2"}, weight=3),
                Endpoint("127.0.0.1", {}, {"version": "v2"}),
            )
        },
    )


def test_subset_policy_overrides_the_rule() -> None:
    policies = {c.name: c.lb_policy for c in build_outbound_clusters(_reviews_view())}

    assert policies == {
        "outbound|9080||reviews.default.svc.cluster.local": cluster_pb2.Cluster.ROUND_ROBIN,
        "outbound|9080|v1|reviews.default.svc.cluster.local": cluster_pb2.Cluster.ROUND_ROBIN,
        "outbound|9080|v2|reviews.default.svc.cluster.local": cluster_pb2.Cluster.RANDOM,
    }


def test_load_assignments_filter_by_subset_and_skip_endpoints_without_the_port() -> None:
    by_cluster = {
        cla.cluster_name: [
            (e.endpoint.address.socket_address.port_value, e.load_balancing_weight.value)
            for e in cla.endpoints[0].lb_endpoints
        ]
        for cla in build_load_assignments(_reviews_view())
    }

    assert by_cluster == {
        "outbound|9080||reviews.default.svc.cluster.local": [(20001, 1), (20002, 3)],
        "outbound|9080|v1|reviews.default.svc.cluster.local": [(20001, 1)],
        "outbound|9080|v2|reviews.default.svc.cluster.local": [(20002, 3)],
    }


def test_unknown_subset_and_ambiguous_port_are_unroutable() -> None:
    index = DestinationIndex(_reviews_view())

    assert isinstance(
        index.resolve(Destination("reviews", subset="v9"), "default", None), Unroutable
    )
    assert isinstance(index.resolve(Destination("reviews", port=1), "default", None), Unroutable)
    assert index.resolve(Destination("reviews"), "default", None) == ClusterTarget(
        "outbound|9080||reviews.default.svc.cluster.local"
    )


def test_gateways_get_no_sidecar_listeners_and_sidecars_no_gateway_ones(
    gateway_view: MeshView,
) -> None:
    gateway = ProxyNode("gw", kind="gateway", labels={"istio": "ingressgateway"})
    sidecar = ProxyNode("s", outbound_port=1, inbound_port=2, app_port=3)

    assert build_outbound_listener(gateway_view, gateway) is None
    assert build_inbound_listener(gateway_view, gateway) is None
    assert build_gateway_listeners(gateway_view, sidecar) == ()
    assert [listener.name for listener in build_gateway_listeners(gateway_view, gateway)] == [
        "gateway_8000",
        "gateway_8001",
    ]
    outbound = build_outbound_listener(gateway_view, sidecar)
    inbound = build_inbound_listener(gateway_view, sidecar)
    assert outbound is not None and outbound.name == "outbound"
    assert inbound is not None and inbound.name == "inbound"


def test_gateway_selector_must_match_the_node_labels(gateway_view: MeshView) -> None:
    stranger = ProxyNode("gw", kind="gateway", labels={"istio": "other"})

    assert build_gateway_listeners(gateway_view, stranger) == ()


_names = st.sampled_from(["a", "b", "web", "api"])
_namespaces = st.sampled_from(["default", "prod"])
_ports = st.lists(st.sampled_from([80, 8080, 9090]), min_size=1, max_size=3, unique=True)


@given(st.lists(st.tuples(_names, _namespaces, _ports), max_size=8))
def test_outbound_domains_are_unique_whatever_the_services(
    specs: list[tuple[str, str, list[int]]],
) -> None:
    """Envoy NACKs a route configuration in which two virtual hosts share a domain."""
    services = {}
    for short, namespace, ports in specs:
        hostname = f"{short}.{namespace}.svc.cluster.local"
        services[hostname] = Service(
            hostname,
            tuple(ServicePort(p, f"p{p}") for p in ports),
            namespace=namespace,
            short_name=short,
        )
    view = MeshView(config=MeshConfig(), services=services, endpoints={})

    config = build_outbound_route_config(view)

    domains = Counter(d for vhost in config.virtual_hosts for d in vhost.domains)
    assert all(count == 1 for count in domains.values()), domains
    for service in services.values():
        for port in service.ports:
            assert f"{service.hostname}:{port.number}" in domains
