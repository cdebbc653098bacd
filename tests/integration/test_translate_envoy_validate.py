"""Envoy itself checks every message translation emits (``envoy --mode validate``).

xDS resources become a static bootstrap: EDS clusters turn STATIC with their assignment
inlined, and RDS references are replaced by the route configuration they name.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from tests.certificates import CertificateAuthority

from pilotfish.agent.bootstrap import INTERNAL_LISTENER_BOOTSTRAP_EXTENSION, build_bootstrap
from pilotfish.agent.ports import free_port
from pilotfish.load.access_log_operators import access_log_format_problems
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.identity import SDS_CLUSTER_NAME
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import (
    LocalityDistribution,
    LocalityFailover,
    LocalityLbSetting,
    OutlierDetection,
)
from pilotfish.model.resources import (
    ConsistentHash,
    CorsPolicy,
    Delegate,
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
    MirrorPolicy,
    PortTrafficPolicy,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from pilotfish.model.security import ClientTLSSettings, PeerAuthentication, ServerTLSSettings
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.model.telemetry import TelemetrySettings
from pilotfish.snapshot import type_urls
from pilotfish.translate import MeshTranslator, ProxyResources
from pilotfish.translate.telemetry import ISTIO_TEXT_FORMAT

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"

pytestmark = pytest.mark.integration


def meta(kind: str, name: str) -> Meta:
    return Meta(kind=kind, name=name, namespace="default", source=SourceMap(f"{name}.yaml"))


def to(host: str, subset: str | None = None, weight: int | None = None) -> RouteDestination:
    return RouteDestination(destination=Destination(host=host, subset=subset), weight=weight)


def every_feature_view(gateway_port: int) -> MeshView:
    sticky = ConsistentHash(http_cookie=HTTPCookie("session", ttl=60.0, path="/"))
    config = MeshConfig(
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "backend"),
                host="backend",
                traffic_policy=TrafficPolicy(LoadBalancer(simple="ROUND_ROBIN")),
                subsets=(
                    Subset("v1", {"version": "v1"}),
                    Subset(
                        "v2", {"version": "v2"}, TrafficPolicy(LoadBalancer(consistent_hash=sticky))
                    ),
                ),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "backend"),
                hosts=("backend",),
                http=(
                    HTTPRoute(
                        match=(
                            HTTPMatchRequest(
                                uri=StringMatch("regex", "/admin/[a-z]+"),
                                method=StringMatch("exact", "POST"),
                                authority=StringMatch("prefix", "backend"),
                                headers={"end-user": StringMatch("regex", "jason|kim")},
                                query_params={"debug": StringMatch("exact", "1")},
                            ),
                            HTTPMatchRequest(uri=StringMatch("exact", "/v2")),
                        ),
                        route=(to("backend", "v2"),),
                        rewrite=Rewrite(uri="/internal", authority="backend.internal"),
                        fault=Fault(
                            delay=FaultDelay(fixed_delay=0.5, percent=10.0),
                            abort=FaultAbort(http_status=503, percent=0.1),
                        ),
                    ),
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/old")),),
                        redirect=Redirect(uri="/new", authority="elsewhere", redirect_code=307),
                    ),
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/healthz")),),
                        direct_response=DirectResponse(status=200, body="ok"),
                    ),
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/gone")),),
                        route=(to("nowhere"),),
                    ),
                    HTTPRoute(
                        match=(
                            HTTPMatchRequest(
                                uri=StringMatch("prefix", "/Caseless"),
                                ignore_uri_case=True,
                                scheme=StringMatch("exact", "http"),
                                without_headers={"x-debug": StringMatch("regex", "1|yes")},
                                port=8080,
                                source_labels={"app": "backend"},
                                source_namespace="default",
                                gateways=("mesh", "web"),
                            ),
                        ),
                        route=(to("backend", "v1"),),
                    ),
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/team")),),
                        delegate=Delegate("team"),
                    ),
                    HTTPRoute(
                        mirrors=(
                            MirrorPolicy(Destination("frontend"), 12.5),
                            MirrorPolicy(Destination("backend", "v2")),
                        ),
                        cors_policy=CorsPolicy(
                            allow_origins=(
                                StringMatch("exact", "https://app.example"),
                                StringMatch("regex", "https://.*[.]example"),
                            ),
                            allow_methods=("GET", "POST"),
                            allow_headers=("x-a",),
                            expose_headers=("x-b",),
                            max_age=600.0,
                            allow_credentials=True,
                            forward_unmatched_preflights=False,
                        ),
                        route=(
                            to("backend", "v1", 90),
                            RouteDestination(
                                destination=Destination(host="backend", subset="v2"),
                                weight=10,
                                headers=Headers(response=HeaderOperations(set={"x-canary": "1"})),
                            ),
                        ),
                        retries=Retries(
                            attempts=3, per_try_timeout=1.5, retry_on="5xx,gateway-error,429"
                        ),
                        timeout=10.0,
                        headers=Headers(
                            request=HeaderOperations(
                                set={"x-a": "1"}, add={"x-b": "2"}, remove=("x-c",)
                            ),
                        ),
                    ),
                ),
            ),
            VirtualService(
                meta=meta("VirtualService", "team"),
                hosts=(),
                http=(
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/team/v2")),),
                        route=(to("backend", "v2"),),
                    ),
                    HTTPRoute(route=(to("backend", "v1"),)),
                ),
            ),
            # Merged with "site" below on the gateway: one virtual host for "*".
            VirtualService(
                meta=meta("VirtualService", "site-extra"),
                hosts=("*",),
                gateways=("web",),
                http=(
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("exact", "/extra")),),
                        route=(to("frontend"),),
                        mirrors=(MirrorPolicy(Destination("backend", port=8080)),),
                    ),
                ),
            ),
            VirtualService(
                meta=meta("VirtualService", "site"),
                hosts=("*",),
                gateways=("web",),
                http=(
                    HTTPRoute(
                        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api/")),),
                        rewrite=Rewrite(uri="/"),
                        route=(to("backend"),),
                    ),
                    HTTPRoute(route=(to("frontend"),)),
                ),
            ),
        ),
        gateways=(
            Gateway(
                meta=meta("Gateway", "web"),
                selector={},
                servers=(GatewayServer(gateway_port, "http", "HTTP", ("*",)),),
            ),
        ),
    )
    services = (
        Service(
            "frontend.default.svc.cluster.local",
            (ServicePort(8080, "http"),),
            short_name="frontend",
        ),
        Service(
            "backend.default.svc.cluster.local",
            (ServicePort(8080, "http"), ServicePort(9090, "grpc", "GRPC")),
            short_name="backend",
        ),
        Service("payments.example.com", (ServicePort(443, "http2", "HTTP2"),), external=True),
        Service("httpbin.org", (ServicePort(80, "http"),), resolution="DNS", external=True),
    )
    replica_ports = {8080: free_port(), 9090: free_port()}
    return MeshView(
        config=config,
        services={s.hostname: s for s in services},
        endpoints={
            "frontend.default.svc.cluster.local": (Endpoint("127.0.0.1", {8080: free_port()}),),
            "backend.default.svc.cluster.local": (
                Endpoint("127.0.0.1", replica_ports, {"version": "v1"}),
                Endpoint("127.0.0.1", replica_ports, {"version": "v2"}, weight=2),
            ),
            "payments.example.com": (Endpoint("127.0.0.2", {443: free_port()}),),
        },
    )


def static_bootstrap(resources: ProxyResources) -> dict[str, object]:
    assignments = {cla.cluster_name: cla for cla in resources.load_assignments}
    routes = {route.name: route for route in resources.routes}
    clusters = []
    for original in resources.clusters:
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(original)
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(assignments[cluster.name])
        clusters.append(json_format.MessageToDict(cluster))
    listeners = []
    for original in resources.listeners:
        listener = listener_pb2.Listener()
        listener.CopyFrom(original)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if not network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    continue  # a TCP proxy, network RBAC
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                network_filter.typed_config.Pack(manager)
        listeners.append(json_format.MessageToDict(listener))
    return {
        "node": {"id": "translate-validate", "cluster": "pilotfish"},
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "bootstrap_extensions": [INTERNAL_LISTENER_BOOTSTRAP_EXTENSION],
    }


def envoy_validate(
    bootstrap: dict[str, object], directory: Path
) -> subprocess.CompletedProcess[str]:
    config_path = directory / "bootstrap.json"
    config_path.write_text(json.dumps(bootstrap, indent=2))
    process = subprocess.Popen(
        [str(ENVOY), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output)


@pytest.mark.parametrize("kind", ["sidecar", "gateway"])
def test_envoy_accepts_generated_resources(kind: str, tmp_path: Path) -> None:
    gateway_port = free_port()
    view = every_feature_view(gateway_port)
    if kind == "sidecar":
        node = ProxyNode(
            id="backend-0",
            service="backend",
            labels={"app": "backend"},
            outbound_port=free_port(),
            inbound_port=free_port(),
            app_port=free_port(),
            app_protocol="GRPC",
        )
    else:
        node = ProxyNode(id="ingress-0", kind="gateway")
    resources = MeshTranslator(view).resources_for(node)
    assert resources.listeners, "nothing to validate: the scenario produced no listener"
    emitted = str(resources.routes)
    for feature in ("request_mirror_policies", "envoy.filters.http.cors", "invert_match"):
        assert feature in emitted or kind == "gateway", f"the scenario lost {feature}"

    result = envoy_validate(static_bootstrap(resources), tmp_path)

    assert result.returncode == 0, result.stdout


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The check above can fail: two virtual hosts sharing a domain are refused."""
    view = every_feature_view(free_port())
    resources = MeshTranslator(view).resources_for(ProxyNode(id="ingress-0", kind="gateway"))
    duplicated = RouteConfiguration()
    duplicated.CopyFrom(resources.routes[0])
    duplicated.virtual_hosts.append(duplicated.virtual_hosts[0])
    duplicated.virtual_hosts[-1].name = "copy"
    broken = ProxyResources({**resources.by_type, type_urls.ROUTE: (duplicated,)})

    result = envoy_validate(static_bootstrap(broken), tmp_path)

    assert result.returncode != 0
    assert "domain" in result.stdout


def security_view(folder: Path, gateway_port: int) -> MeshView:
    """Every mode of PeerAuthentication, DestinationRule tls and Gateway TLS at once."""
    ca = CertificateAuthority("validate")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    client_cert, client_key = ca.issue(dns="client.example.com").write(folder, "client")
    server_cert, server_key = ca.issue(dns="www.example.com").write(folder, "server")
    files = {"ca_certificates": str(ca_file)}
    mutual = ClientTLSSettings(
        "MUTUAL", **files, client_certificate=str(client_cert), private_key=str(client_key)
    )
    simple = ServerTLSSettings(
        "SIMPLE", str(server_cert), str(server_key), None, "TLSV1_2", "TLSV1_3"
    )
    mutual_server = ServerTLSSettings("MUTUAL", str(server_cert), str(server_key), str(ca_file))
    config = MeshConfig(
        peer_authentications=(
            PeerAuthentication(meta("PeerAuthentication", "ns"), "STRICT"),
            PeerAuthentication(
                meta("PeerAuthentication", "backend"),
                "UNSET",
                {"app": "backend"},
                {8080: "PERMISSIVE"},
            ),
        ),
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "payments"),
                host="payments.example.com",
                traffic_policy=TrafficPolicy(
                    tls=ClientTLSSettings("SIMPLE", **files, sni="payments.example.com"),
                    port_settings={443: PortTrafficPolicy(tls=mutual)},
                ),
                subsets=(
                    Subset("plain", {}, TrafficPolicy(tls=ClientTLSSettings("DISABLE"))),
                    Subset("mesh", {}, TrafficPolicy(tls=ClientTLSSettings("ISTIO_MUTUAL"))),
                ),
            ),
        ),
        gateways=(
            Gateway(
                meta=meta("Gateway", "web"),
                selector={},
                servers=(
                    GatewayServer(gateway_port, "a", "HTTP", ("a.example.com",), tls=simple),
                    GatewayServer(
                        gateway_port, "b", "HTTP", ("*.b.example.com",), tls=mutual_server
                    ),
                    GatewayServer(free_port(), "http", "HTTP", ("*",), https_redirect=True),
                ),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "site"),
                hosts=("*",),
                gateways=("web",),
                http=(HTTPRoute(route=(to("backend"),)),),
            ),
        ),
    )
    services = (
        Service(
            "backend.default.svc.cluster.local", (ServicePort(8080, "http"),), short_name="backend"
        ),
        Service(
            "payments.example.com",
            (ServicePort(443, "https", "HTTP"),),
            resolution="DNS",
            external=True,
        ),
    )
    backend_endpoints = (
        Endpoint("127.0.0.1", {8080: free_port()}, service_account="backend"),
        Endpoint("127.0.0.1", {8080: free_port()}),
    )
    return MeshView(
        config=config,
        services={s.hostname: s for s in services},
        endpoints={"backend.default.svc.cluster.local": backend_endpoints},
    )


@pytest.mark.parametrize("kind", ["strict-sidecar", "permissive-sidecar", "gateway"])
def test_envoy_accepts_generated_security(kind: str, tmp_path: Path) -> None:
    view = security_view(tmp_path, free_port())
    if kind == "gateway":
        node = ProxyNode(id="ingress-0", kind="gateway")
    else:
        node = ProxyNode(
            id="backend-0",
            service="backend",
            labels={"app": "backend"} if kind == "permissive-sidecar" else {},
            outbound_port=free_port(),
            inbound_port=free_port(),
            app_port=8080,
        )
    resources = MeshTranslator(view).resources_for(node)
    emitted = str(resources.listeners) + str(resources.clusters)
    assert "UpstreamTlsContext" in emitted
    assert "DownstreamTlsContext" in emitted

    config = static_bootstrap(resources)
    static = config["static_resources"]
    assert isinstance(static, dict)
    # The agent's SDS cluster, which the bootstrap of every sidecar carries.
    static["clusters"].append(
        {
            "name": SDS_CLUSTER_NAME,
            "type": "STATIC",
            "connect_timeout": "1s",
            "http2_protocol_options": {},
            "load_assignment": {
                "cluster_name": SDS_CLUSTER_NAME,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/sds"}}}}]}
                ],
            },
        }
    )
    result = envoy_validate(config, tmp_path)

    assert result.returncode == 0, result.stdout


def test_envoy_rejects_a_tls_context_with_a_missing_file(tmp_path: Path) -> None:
    """The check above can fail: a certificate file that is not there is refused."""
    view = security_view(tmp_path, free_port())
    (tmp_path / "server.pem").unlink()
    resources = MeshTranslator(view).resources_for(ProxyNode(id="ingress-0", kind="gateway"))

    result = envoy_validate(static_bootstrap(resources), tmp_path)

    assert result.returncode != 0
    assert "server.pem" in result.stdout


TELEMETRY_VARIANTS = {
    "no-file-no-tracing": (TelemetrySettings(), False),
    "text-file-tracing": (TelemetrySettings(access_log_file="/dev/stdout"), True),
    "custom-text-tracing": (
        TelemetrySettings(
            access_log_file="/dev/stdout",
            access_log_format="%RESPONSE_CODE% %RESPONSE_FLAGS%",
            tracing_sampling=1.0,
            tags={"team": "shop"},
        ),
        True,
    ),
    "json-file-no-tracing": (
        TelemetrySettings(access_log_file="/dev/stdout", access_log_encoding="JSON"),
        False,
    ),
}


def with_agent_clusters(config: dict[str, object], node: ProxyNode) -> dict[str, object]:
    """The static clusters the agent's bootstrap gives this node (xDS, SDS, telemetry)."""
    agent = build_bootstrap(
        node,
        xds_address=("127.0.0.1", free_port()),
        admin_port=0,
        sds_socket=Path("/tmp/sds"),
        telemetry_address=("127.0.0.1", free_port()) if node.telemetry else None,
    )
    static = config["static_resources"]
    assert isinstance(static, dict)
    static["clusters"].extend(agent["static_resources"]["clusters"])
    return {**config, "layered_runtime": agent["layered_runtime"]}


@pytest.mark.parametrize("variant", sorted(TELEMETRY_VARIANTS))
@pytest.mark.parametrize("kind", ["sidecar", "gateway"])
def test_envoy_accepts_generated_telemetry(kind: str, variant: str, tmp_path: Path) -> None:
    settings, traced = TELEMETRY_VARIANTS[variant]
    view = every_feature_view(free_port())
    view = replace(
        view, config=replace(view.config, mesh=replace(view.config.mesh, telemetry=settings))
    )
    if kind == "sidecar":
        node = ProxyNode(
            id="backend-0",
            service="backend",
            outbound_port=free_port(),
            inbound_port=free_port(),
            app_port=free_port(),
            telemetry=traced,
        )
    else:
        node = ProxyNode(id="ingress-0", kind="gateway", telemetry=traced)
    resources = MeshTranslator(view).resources_for(node)
    emitted = str(resources.listeners)
    assert ("envoy.tracers.zipkin" in emitted) == traced
    assert ("envoy.access_loggers.file" in emitted) == (settings.access_log_file is not None)

    result = envoy_validate(with_agent_clusters(static_bootstrap(resources), node), tmp_path)

    assert result.returncode == 0, result.stdout


def test_envoy_rejects_tracing_without_the_telemetry_cluster(tmp_path: Path) -> None:
    """The check above can fail: spans need the cluster that the agent adds."""
    node = ProxyNode(id="ingress-0", kind="gateway", telemetry=True)
    resources = MeshTranslator(every_feature_view(free_port())).resources_for(node)
    config = with_agent_clusters(static_bootstrap(resources), replace(node, telemetry=False))

    result = envoy_validate(config, tmp_path)

    assert result.returncode != 0
    assert "pilotfish-telemetry" in result.stdout


# Istio's default, Envoy's default, and formats of the kind Istio's docs show; then formats
# with the mistakes the loader refuses.
ACCESS_LOG_FORMATS = [
    ISTIO_TEXT_FORMAT,
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n',
    "%START_TIME(%s.%3f)% %REQ(:PATH):64% %UPSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_URI_SAN% "
    "%DYNAMIC_METADATA(istio.peer:workload)% %RESPONSE_FLAGS_LONG% 100%% %TRACE_ID%\n",
    "%FOO%\n",
    "done 100% %DURATION%\n",
    "%REQ%\n",
    "%DURATION(ms)%\n",
    "%START_TIME\n",
]


@pytest.mark.parametrize("log_format", ACCESS_LOG_FORMATS)
def test_envoy_takes_exactly_the_access_log_formats_the_loader_takes(
    log_format: str, tmp_path: Path
) -> None:
    settings = TelemetrySettings(access_log_file="/dev/null", access_log_format=log_format)
    view = every_feature_view(free_port())
    view = replace(
        view, config=replace(view.config, mesh=replace(view.config.mesh, telemetry=settings))
    )
    node = ProxyNode(id="ingress-0", kind="gateway")
    bootstrap = static_bootstrap(MeshTranslator(view).resources_for(node))
    assert json.dumps(log_format)[1:-1] in json.dumps(bootstrap)  # the format is checked

    result = envoy_validate(with_agent_clusters(bootstrap, node), tmp_path)

    loader_takes_it = access_log_format_problems(log_format) == []
    assert (result.returncode == 0) == loader_takes_it, result.stdout[-2000:]


def test_envoy_accepts_locality_priorities_and_weights(tmp_path: Path) -> None:
    """Priorities and locality weights, also with a ring hash (Istio sets both)."""
    failover = LocalityLbSetting(failover=(LocalityFailover("us-east", "eu-west"),))
    spread = LocalityLbSetting(
        distribute=(LocalityDistribution("us-east/*", {"us-east": 60, "eu-west": 40}),)
    )
    sticky = ConsistentHash(http_header_name="x-user")
    rule = DestinationRule(
        meta=meta("DestinationRule", "backend"),
        host="backend",
        traffic_policy=TrafficPolicy(
            LoadBalancer(locality_lb_setting=failover),
            outlier_detection=OutlierDetection(consecutive_5xx_errors=1),
        ),
        subsets=(
            Subset(
                "v1",
                {"version": "v1"},
                TrafficPolicy(LoadBalancer(consistent_hash=sticky, locality_lb_setting=failover)),
            ),
            Subset(
                "v2", {"version": "v2"}, TrafficPolicy(LoadBalancer(locality_lb_setting=spread))
            ),
        ),
    )
    backend = Service(
        "backend.default.svc.cluster.local", (ServicePort(8080, "http"),), short_name="backend"
    )
    endpoints = tuple(
        Endpoint("127.0.0.1", {8080: free_port()}, {"version": version}, locality=locality)
        for version in ("v1", "v2")
        for locality in ("us-east/a/1", "us-east/b/1", "eu-west/c/1", "ap-south/d/1")
    )
    view = MeshView(
        config=MeshConfig(destination_rules=(rule,)),
        services={backend.hostname: backend},
        endpoints={backend.hostname: endpoints},
    )
    node = ProxyNode(id="caller-0", outbound_port=free_port(), locality="us-east/a/1")
    resources = MeshTranslator(view).resources_for(node)
    priorities = {g.priority for a in resources.load_assignments for g in a.endpoints}
    assert priorities == {0, 1, 2, 3}, "the scenario lost its priorities"
    weighted = [
        c.name
        for c in resources.clusters
        if c.common_lb_config.HasField("locality_weighted_lb_config")
    ]
    assert len(weighted) == 3, weighted

    result = envoy_validate(static_bootstrap(resources), tmp_path)

    assert result.returncode == 0, result.stdout
