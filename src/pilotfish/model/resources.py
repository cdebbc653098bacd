"""Typed mesh configuration resources: the subset of Istio's API (and our own Workload) we accept.

Every resource carries its ``SourceMap`` so that checks made long after loading can still
point at the exact line a user wrote. Durations are seconds as floats; ``None`` means
"not set", so translation can tell an explicit value from a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN
from pilotfish.model.rate_limits import RateLimitSettings
from pilotfish.model.resilience import (
    ConnectionPool,
    LocalityLbSetting,
    OutlierDetection,
    RetryBudget,
)
from pilotfish.model.telemetry import TelemetrySettings

if TYPE_CHECKING:  # authorization.py and security.py build on Meta; only annotations here
    # name their types
    from pilotfish.model.authorization import AuthorizationPolicy, RequestAuthentication
    from pilotfish.model.rate_limits import RateLimitPolicy
    from pilotfish.model.security import ClientTLSSettings, PeerAuthentication, ServerTLSSettings

DEFAULT_NAMESPACE = "default"
CLUSTER_DOMAIN = "svc.cluster.local"
# Istio retries twice when a route sets no retry policy, or one without ``attempts``.
ISTIO_DEFAULT_RETRY_ATTEMPTS = 2
# The label Istio's injector puts on a workload that has a sidecar.
TLS_MODE_LABEL = "security.istio.io/tlsMode"
TLS_MODE_ISTIO = "istio"
# istio-agent asks for 24 h workload certificates; istiod's self-signed root lives 10 years.
DEFAULT_WORKLOAD_TTL_SECONDS = 24 * 3600.0
MIN_WORKLOAD_TTL_SECONDS = 60.0
DEFAULT_ROOT_TTL_SECONDS = 10 * 365 * 24 * 3600.0
DEFAULT_ROOT_RENEW_GRACE_PERCENTAGE = 20.0

MatchKind = Literal["exact", "prefix", "regex"]
Protocol = Literal["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "AUTO"]
"""How a port's traffic is carried, as Istio selects it (``protocol``, the port name's prefix,
``appProtocol``). ``HTTP2`` and ``GRPC`` speak HTTP/2 (h2c) to the app. ``TCP`` is opaque bytes
(Istio's MONGO, MYSQL and REDIS are carried as TCP, as Istio does without its protocol
filters). ``TLS`` is opaque TLS routed by SNI, never terminated (a ServiceEntry's HTTPS port is
``TLS``; a Gateway server's HTTPS that terminates is ``HTTP`` with ``tls``). ``AUTO``: nothing
names it, so the proxy detects HTTP/1.1 or HTTP/2 from the first bytes and carries anything
else as TCP (Envoy's HTTP inspector), as Istio does for an unnamed port."""
HTTP_PROTOCOLS: frozenset[Protocol] = frozenset({"HTTP", "HTTP2", "GRPC"})
Interception = Literal["explicit", "transparent"]
"""How an app's outbound traffic reaches its sidecar: ``explicit`` (``HTTP_PROXY`` and the
Workload's ``upstreams`` local ports) or ``transparent`` (its own network namespace, iptables
redirects every TCP connection to the sidecar: Linux and root only)."""
SimpleLB = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]


@dataclass(frozen=True)
class Meta:
    kind: str
    name: str
    namespace: str
    source: SourceMap


# --- VirtualService -------------------------------------------------------------------------


@dataclass(frozen=True)
class StringMatch:
    kind: MatchKind
    value: str


@dataclass(frozen=True)
class HTTPMatchRequest:
    """One match block: all of its conditions must hold (blocks of a route are ORed)."""

    name: str | None = None
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)
    query_params: Mapping[str, StringMatch] = field(default_factory=dict)
    scheme: StringMatch | None = None
    # A request matches when each named header is absent or does not match.
    without_headers: Mapping[str, StringMatch] = field(default_factory=dict)
    ignore_uri_case: bool = False
    # The service (or gateway server) port the request was addressed to.
    port: int | None = None
    # Conditions on the calling proxy rather than on the request.
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None
    # "mesh" and/or gateways as written; qualify with the VirtualService's namespace.
    gateways: tuple[str, ...] = ()

    @property
    def depends_on_source(self) -> bool:
        return bool(self.source_labels) or self.source_namespace is not None

    def applies_to_source(self, labels: Mapping[str, str], namespace: str) -> bool:
        """Whether a proxy with these labels, in this namespace, gets this match at all."""
        if self.source_namespace is not None and self.source_namespace != namespace:
            return False
        return selector_matches(self.source_labels, labels)


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class HeaderOperations:
    set: Mapping[str, str] = field(default_factory=dict)
    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headers:
    request: HeaderOperations = field(default_factory=HeaderOperations)
    response: HeaderOperations = field(default_factory=HeaderOperations)


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    weight: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout: float | None = None
    retry_on: str | None = None


@dataclass(frozen=True)
class Rewrite:
    uri: str | None = None
    authority: str | None = None


@dataclass(frozen=True)
class Redirect:
    uri: str | None = None
    authority: str | None = None
    redirect_code: int = 301


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: str | None = None


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay: float
    percent: float = 100.0


@dataclass(frozen=True)
class FaultAbort:
    http_status: int
    percent: float = 100.0


@dataclass(frozen=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True)
class MirrorPolicy:
    """A copy of each request (``percent`` of them) sent to ``destination``, answer dropped.

    Istio mirrors every request when no percentage is given and none at an explicit 0.
    """

    destination: Destination
    percent: float = 100.0


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool | None = None
    # Istio's unmatchedPreflights: FORWARD (the default) passes a preflight whose origin is
    # not allowed on to the upstream; IGNORE answers it without CORS headers.
    forward_unmatched_preflights: bool = True


@dataclass(frozen=True)
class Delegate:
    """A root route handing its traffic to the routes of a VirtualService without hosts."""

    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class HTTPRoute:
    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None
    retries: Retries | None = None
    headers: Headers | None = None
    fault: Fault | None = None
    mirrors: tuple[MirrorPolicy, ...] = ()
    cors_policy: CorsPolicy | None = None
    delegate: Delegate | None = None


@dataclass(frozen=True)
class L4MatchAttributes:
    """One match block of a ``tcp`` route (Istio's L4MatchAttributes) or, with ``sni_hosts``,
    of a ``tls`` route (TLSMatchAttributes). All set conditions must hold; blocks are ORed."""

    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()
    sni_hosts: tuple[str, ...] = ()
    """TLS routes only (required there): the SNI names, wildcards as ``*.example.com``."""

    def applies_to_source(self, labels: Mapping[str, str], namespace: str) -> bool:
        if self.source_namespace is not None and self.source_namespace != namespace:
            return False
        return selector_matches(self.source_labels, labels)


@dataclass(frozen=True)
class TCPRoute:
    """Connections matching any of ``match`` (every connection when empty) go to ``route``,
    split by weight. Header operations do not exist at this layer."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class TLSRoute:
    """TLS connections told apart by SNI (each match has ``sni_hosts``), passed through
    unterminated to ``route``, split by weight."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class VirtualService:
    meta: Meta
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()

    @property
    def applies_to_mesh(self) -> bool:
        """Istio's rule: no gateways listed means sidecars only; "mesh" names them explicitly.

        A VirtualService without hosts is a delegate: it applies only through a root's route.
        """
        return bool(self.hosts) and (not self.gateways or "mesh" in self.gateways)

    @property
    def is_delegate(self) -> bool:
        return not self.hosts


# --- DestinationRule ------------------------------------------------------------------------


@dataclass(frozen=True)
class HTTPCookie:
    name: str
    ttl: float | None = None
    path: str | None = None


@dataclass(frozen=True)
class ConsistentHash:
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool = False


@dataclass(frozen=True)
class LoadBalancer:
    simple: SimpleLB | None = None
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    tls: ClientTLSSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    retry_budget: RetryBudget | None = None
    port_settings: Mapping[int, PortTrafficPolicy] = field(default_factory=dict)
    """portLevelSettings[] by port number: an entry replaces the policy's load balancer,
    connection pool, outlier detection and tls for that port's clusters."""


@dataclass(frozen=True)
class PortTrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    meta: Meta
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()


# --- Gateway --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayServer:
    port: int
    port_name: str
    protocol: Protocol
    hosts: tuple[str, ...]
    # An HTTPS server terminates TLS (``protocol`` is then the HTTP carried inside it).
    tls: ServerTLSSettings | None = None
    https_redirect: bool = False
    passthrough: bool = False
    """``tls.mode: PASSTHROUGH`` (``protocol`` is then ``TLS``): connections are routed by SNI
    to the VirtualServices' ``tls`` routes, never terminated. A ``TCP`` server takes their
    ``tcp`` routes instead."""


@dataclass(frozen=True)
class Gateway:
    meta: Meta
    selector: Mapping[str, str]
    servers: tuple[GatewayServer, ...]


# --- ServiceEntry / WorkloadEntry -----------------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    number: int
    name: str
    protocol: Protocol = "HTTP"
    target_port: int | None = None


@dataclass(frozen=True)
class NotCarriedPort:
    """A port Istio accepts with a protocol Pilotfish does not carry yet (TLS, TCP, MONGO...).

    Kept apart from ``ServiceEntry.ports``, so translation never builds anything for it,
    while validation can still tell a route to it why it gets nothing.
    """

    number: int
    name: str
    protocol: str


@dataclass(frozen=True)
class WorkloadEntrySpec:
    """The spec shared by WorkloadEntry resources and ServiceEntry's inline endpoints."""

    address: str
    ports: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int | None = None
    service_account: str | None = None
    locality: str | None = None
    """``region/zone/subzone`` (Istio: WorkloadEntry ``locality``)."""

    @property
    def has_sidecar(self) -> bool:
        """Istio's sign that a sidecar serves this endpoint, so callers speak mTLS to it."""
        return self.labels.get(TLS_MODE_LABEL) == TLS_MODE_ISTIO


@dataclass(frozen=True)
class ServiceEntry:
    meta: Meta
    hosts: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    addresses: tuple[str, ...] = ()
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["STATIC", "DNS", "NONE"] = "STATIC"
    endpoints: tuple[WorkloadEntrySpec, ...] = ()
    workload_selector: Mapping[str, str] | None = None
    ports_not_carried: tuple[NotCarriedPort, ...] = ()


@dataclass(frozen=True)
class WorkloadEntry:
    meta: Meta
    spec: WorkloadEntrySpec


# --- pilotfish.io/v1alpha1 Workload ---------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A process that ``pilotfish up`` starts, with one sidecar per replica."""

    meta: Meta
    service: str
    port: int
    command: tuple[str, ...]
    protocol: Protocol = "HTTP"
    labels: Mapping[str, str] = field(default_factory=dict)
    replicas: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    directory: str = "."
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    locality: str | None = None
    """``region/zone/subzone`` of every replica (Kubernetes: the node's topology labels)."""
    upstreams: tuple[Upstream, ...] = ()
    """Services the app reaches through a loopback port of its own sidecar (Consul's
    ``upstreams``): for clients that ignore ``HTTP_PROXY`` and for TCP."""


@dataclass(frozen=True)
class Upstream:
    """``spec.upstreams[]`` of a Workload: ``127.0.0.1:<local_port>`` in each replica goes
    through its sidecar to ``service``'s ``port``, with that port's routes and policies.
    ``local_port`` None: ``pilotfish up`` picks a free one; the app finds it in the environment
    (``upstream_environment_name``)."""

    service: str
    """As written: a short name (the Workload's namespace) or a qualified host."""
    port: int
    local_port: int | None = None


# --- pilotfish.io/v1alpha1 MeshConfig -------------------------------------------------------


@dataclass(frozen=True)
class PluggedCertificateAuthority:
    """Istio's "plug in CA certificates": the CA signs with this key and chain (file paths,
    relative to the folder of the MeshConfig file already resolved)."""

    cert_chain: str
    private_key: str
    root_cert: str


@dataclass(frozen=True)
class CertificateSettings:
    workload_ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS
    """Lifetime of workload certificates; the agent rotates at half of it."""
    root_ttl: float = DEFAULT_ROOT_TTL_SECONDS
    """Lifetime of the self-signed root the CA makes on first start."""
    root_renew_grace_percentage: float = DEFAULT_ROOT_RENEW_GRACE_PERCENTAGE
    """The self-signed root rotates by itself once less than this much of its lifetime is
    left (Istio's CITADEL_SELF_SIGNED_CA_RENEW_GRACE_PERIOD_PERCENTAGE)."""
    plugged: PluggedCertificateAuthority | None = None


@dataclass(frozen=True)
class MeshSettings:
    """The folder's one ``pilotfish.io/v1alpha1`` MeshConfig (defaults when there is none).

    Field names follow Istio's MeshConfig where it has them (``trustDomain``).
    """

    meta: Meta | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    certificates: CertificateSettings = field(default_factory=CertificateSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    """Access logs and tracing (``accessLogFile``, ``defaultConfig.tracing``...)."""
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    locality_lb_setting: LocalityLbSetting | None = None
    """Istio's mesh-wide ``localityLbSetting``; a DestinationRule's own replaces it."""
    interception: Interception = "explicit"
    """``spec.interception``: how ``pilotfish up`` brings each replica's traffic to its sidecar."""


@dataclass(frozen=True)
class MeshConfig:
    """Everything loaded from one folder, already validated."""

    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    workload_entries: tuple[WorkloadEntry, ...] = ()
    workloads: tuple[Workload, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    mesh: MeshSettings = field(default_factory=MeshSettings)
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    rate_limit_policies: tuple[RateLimitPolicy, ...] = ()


def qualify_host(host: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Expand a short name as Istio does: ``reviews`` -> ``reviews.default.svc.cluster.local``.

    Names with a dot and wildcards are already qualified (``api.example.com``, ``*``).
    """
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selection: every selector pair is among the labels; empty selects all."""
    return all(labels.get(key) == value for key, value in selector.items())


def is_http(protocol: Protocol) -> bool:
    """Carried by an HTTP connection manager (routes, retries, HTTP policies)."""
    return protocol in HTTP_PROTOCOLS


def speaks_http2(protocol: Protocol) -> bool:
    return protocol in ("HTTP2", "GRPC")


def upstream_environment_name(service: str, port: int) -> str:
    """``PILOTFISH_UPSTREAM_<SERVICE>_<PORT>``: where the app finds an upstream's local
    ``host:port`` (``db`` port 5432 -> ``PILOTFISH_UPSTREAM_DB_5432``; dots and dashes of a
    qualified name become ``_``)."""
    name = "".join(c if c.isalnum() else "_" for c in service.upper())
    return f"PILOTFISH_UPSTREAM_{name}_{port}"
