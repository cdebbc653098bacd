"""RouteConfigurations: the shared ``outbound`` one for sidecars; for gateways ``http.<port>``
(plaintext servers) and one per TLS server.

Istio's HTTP routing rules become Envoy routes here; the same code serves sidecars and
gateways so both behave alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.delegation import (
    MESH,
    expand_delegates,
    qualify_gateway,
    virtual_services_by_name,
)
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    CLUSTER_DOMAIN,
    ISTIO_DEFAULT_RETRY_ATTEMPTS,
    ConsistentHash,
    CorsPolicy,
    Destination,
    Fault,
    Gateway,
    GatewayServer,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    L4MatchAttributes,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    VirtualService,
    qualify_host,
)
from pilotfish.model.services import MeshView, Service
from pilotfish.translate.connect_tunnel import (
    opaque_connect_route,
    refused_connect_route,
    routed_as_http,
    tunnel_route,
)
from pilotfish.translate.destinations import ClusterTarget, DestinationIndex, Unroutable
from pilotfish.translate.gateway_selection import (
    binds_to,
    gateway_binding,
    gateway_chains,
    http_servers_by_port,
    server_allows,
)
from pilotfish.translate.naming import OUTBOUND_ROUTE_CONFIG, outbound_cluster_name
from pilotfish.translate.proto_values import duration_from_seconds, pack, percent_to_fraction
from pilotfish.translate.tcp_proxy import WeightedCluster

FAULT_FILTER_NAME = "envoy.filters.http.fault"
CORS_FILTER_NAME = "envoy.filters.http.cors"

# Istio's retry policy for routes that set none.
DEFAULT_RETRY_ATTEMPTS = ISTIO_DEFAULT_RETRY_ATTEMPTS
# Istio's value: how often to re-pick when the pick is a host already tried.
HOST_SELECTION_ATTEMPTS = 5
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIABLE_STATUS_CODES = (503,)
RETRIABLE_STATUS_CODES = "retriable-status-codes"

# Envoy's own answer to an unknown authority is an empty 404: an app that believes it talks to
# a plain HTTP proxy gets no hint that it misspelled a service name. Say which host it asked for.
UNKNOWN_HOST_BODY = "pilotfish: no service in the mesh answers to host %REQ(:authority)%\n"

_REDIRECT_CODES: Mapping[int, rc.RedirectAction.RedirectResponseCode.ValueType] = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}

_WHOLE_PATH = "^.*$"


# --- matches --------------------------------------------------------------------------------


def string_matcher(match: StringMatch) -> string_pb2.StringMatcher:
    if match.kind == "exact":
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind == "prefix":
        return string_pb2.StringMatcher(prefix=match.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))


def _header_matcher(name: str, match: StringMatch) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_matcher(match))


def route_match(block: HTTPMatchRequest | None) -> rc.RouteMatch:
    """All conditions of one match block, ANDed; no block (or no uri) matches every path."""
    match = rc.RouteMatch()
    uri = block.uri if block is not None else None
    if uri is None or uri.kind == "prefix":
        match.prefix = uri.value if uri is not None else "/"
    elif uri.kind == "exact":
        match.path = uri.value
    else:
        match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.value))
    if block is None:
        return match
    if block.ignore_uri_case:
        match.case_sensitive.value = False
    if block.method is not None:
        match.headers.append(_header_matcher(":method", block.method))
    if block.authority is not None:
        match.headers.append(_header_matcher(":authority", block.authority))
    if block.scheme is not None:
        match.headers.append(_header_matcher(":scheme", block.scheme))
    for name in sorted(block.headers):
        match.headers.append(_header_matcher(name, block.headers[name]))
    for name in sorted(block.without_headers):
        negated = _header_matcher(name, block.without_headers[name])
        negated.invert_match = True
        # A request without the header has no value to match, so it passes the negation.
        negated.treat_missing_header_as_empty = True
        match.headers.append(negated)
    for name in sorted(block.query_params):
        query_match = string_matcher(block.query_params[name])
        match.query_parameters.append(rc.QueryParameterMatcher(name=name, string_match=query_match))
    return match


# --- header manipulation ------------------------------------------------------------------------


def _header_options(operations: HeaderOperations) -> list[base_pb2.HeaderValueOption]:
    options = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key, value in sorted(operations.set.items())
    ]
    options.extend(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
        )
        for key, value in sorted(operations.add.items())
    )
    return options


def _apply_headers(target: rc.Route | rc.WeightedCluster.ClusterWeight, headers: Headers) -> None:
    target.request_headers_to_add.extend(_header_options(headers.request))
    target.request_headers_to_remove.extend(headers.request.remove)
    target.response_headers_to_add.extend(_header_options(headers.response))
    target.response_headers_to_remove.extend(headers.response.remove)


# --- actions --------------------------------------------------------------------------------


def _retry_elsewhere(policy: rc.RetryPolicy) -> rc.RetryPolicy:
    """Retry on another endpoint, as Istio does: a retry to the replica that just failed
    (likely, with two replicas and a random pick) would often fail the same way."""
    policy.retry_host_predicate.add(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
    )
    policy.host_selection_retry_max_attempts = HOST_SELECTION_ATTEMPTS
    return policy


def retry_policy(retries: Retries | None) -> rc.RetryPolicy | None:
    """Istio's default when unset; ``attempts: 0`` turns retries off."""
    if retries is None:
        return _retry_elsewhere(
            rc.RetryPolicy(
                retry_on=DEFAULT_RETRY_ON,
                num_retries=wrappers_pb2.UInt32Value(value=DEFAULT_RETRY_ATTEMPTS),
                retriable_status_codes=DEFAULT_RETRIABLE_STATUS_CODES,
            )
        )
    if retries.attempts <= 0:
        return None
    policy = _retry_elsewhere(
        rc.RetryPolicy(num_retries=wrappers_pb2.UInt32Value(value=retries.attempts))
    )
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration_from_seconds(retries.per_try_timeout))
    if retries.retry_on is None:
        policy.retry_on = DEFAULT_RETRY_ON
        policy.retriable_status_codes.extend(DEFAULT_RETRIABLE_STATUS_CODES)
        return policy
    conditions: list[str] = []
    for token in (t.strip() for t in retries.retry_on.split(",")):
        if token.isdigit():
            policy.retriable_status_codes.append(int(token))
        elif token and token not in conditions:
            conditions.append(token)
    if policy.retriable_status_codes and RETRIABLE_STATUS_CODES not in conditions:
        conditions.append(RETRIABLE_STATUS_CODES)
    policy.retry_on = ",".join(conditions)
    return policy


def hash_policy(consistent_hash: ConsistentHash) -> rc.RouteAction.HashPolicy:
    if consistent_hash.http_header_name is not None:
        return rc.RouteAction.HashPolicy(
            header=rc.RouteAction.HashPolicy.Header(header_name=consistent_hash.http_header_name)
        )
    if consistent_hash.http_cookie is not None:
        cookie = rc.RouteAction.HashPolicy.Cookie(name=consistent_hash.http_cookie.name)
        if consistent_hash.http_cookie.ttl is not None:
            cookie.ttl.CopyFrom(duration_from_seconds(consistent_hash.http_cookie.ttl))
        if consistent_hash.http_cookie.path is not None:
            cookie.path = consistent_hash.http_cookie.path
        return rc.RouteAction.HashPolicy(cookie=cookie)
    return rc.RouteAction.HashPolicy(
        connection_properties=rc.RouteAction.HashPolicy.ConnectionProperties(source_ip=True)
    )


def unroutable_response(problems: Iterable[str]) -> rc.DirectResponseAction:
    """A destination we cannot serve fails visibly, naming why (linkerd's rule)."""
    body = "".join(f"pilotfish: {problem}\n" for problem in problems)
    return rc.DirectResponseAction(status=503, body=base_pb2.DataSource(inline_string=body))


def _redirect_action(redirect: Redirect) -> rc.RedirectAction:
    code = _REDIRECT_CODES.get(redirect.redirect_code, rc.RedirectAction.MOVED_PERMANENTLY)
    action = rc.RedirectAction(response_code=code)
    if redirect.uri is not None:
        action.path_redirect = redirect.uri
    if redirect.authority is not None:
        action.host_redirect = redirect.authority
    return action


def fault_config(fault: Fault) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault()
    if fault.delay is not None:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=duration_from_seconds(fault.delay.fixed_delay),
                percentage=percent_to_fraction(fault.delay.percent),
            )
        )
    if fault.abort is not None:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=fault.abort.http_status,
                percentage=percent_to_fraction(fault.abort.percent),
            )
        )
    return config


def cors_config(policy: CorsPolicy) -> cors_pb2.CorsPolicy:
    """Istio's translation: the filter is always enabled where a route sets a policy."""
    config = cors_pb2.CorsPolicy(
        allow_origin_string_match=[string_matcher(origin) for origin in policy.allow_origins],
        allow_methods=",".join(policy.allow_methods),
        allow_headers=",".join(policy.allow_headers),
        expose_headers=",".join(policy.expose_headers),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(
            value=policy.forward_unmatched_preflights
        ),
    )
    config.filter_enabled.default_value.numerator = 100
    if policy.max_age is not None:
        config.max_age = str(int(policy.max_age))
    if policy.allow_credentials is not None:
        config.allow_credentials.value = policy.allow_credentials
    return config


SourceFilter = Callable[[HTTPMatchRequest], bool]


def every_source(block: HTTPMatchRequest) -> bool:
    return True


@dataclass(frozen=True)
class RouteScope:
    """Where routes are being built, for the match conditions that are not about the request
    itself: the port it was addressed to, the binding ("mesh" or "namespace/gateway") that
    received it, and which source-dependent blocks the calling proxy gets."""

    port: int | None
    bindings: frozenset[str] = frozenset({MESH})
    source: SourceFilter = every_source

    def admits(self, block: HTTPMatchRequest, namespace: str) -> bool:
        if block.port is not None and self.port is not None and block.port != self.port:
            return False
        if block.gateways and not {qualify_gateway(g, namespace) for g in block.gateways} & (
            self.bindings
        ):
            return False
        return self.source(block)


class RouteBuilder:
    """Turns one VirtualService's HTTP routes into Envoy routes.

    ``namespace`` qualifies short destination hosts; ``listener_port`` is the service port the
    virtual host serves, used when a destination names no port and its service has several
    (a gateway's port is not a service port: there it is None).
    """

    def __init__(
        self,
        destinations: DestinationIndex,
        namespace: str,
        scope: RouteScope,
        listener_port: int | None = None,
    ):
        self._destinations = destinations
        self._namespace = namespace
        self._listener_port = listener_port
        self._scope = scope

    def build(self, http: HTTPRoute) -> list[rc.Route]:
        """One Envoy route per match block: Envoy ORs routes, not the matches inside one.

        Blocks meant for another port, binding or caller are left out here; a route whose
        blocks are all left out is left out entirely (Istio's rule), never widened to all.
        """
        blocks: Sequence[HTTPMatchRequest | None] = (
            [b for b in http.match if self._scope.admits(b, self._namespace)]
            if http.match
            else (None,)
        )
        return [self._route(http, block) for block in blocks]

    def _route(self, http: HTTPRoute, block: HTTPMatchRequest | None) -> rc.Route:
        route = rc.Route(match=route_match(block))
        name = (block.name if block is not None else None) or http.name
        if name:
            route.name = name
        if http.redirect is not None:
            route.redirect.CopyFrom(_redirect_action(http.redirect))
        elif http.direct_response is not None:
            response = rc.DirectResponseAction(status=http.direct_response.status)
            if http.direct_response.body is not None:
                response.body.inline_string = http.direct_response.body
            route.direct_response.CopyFrom(response)
        else:
            self._forward(route, http, block)
        if http.headers is not None:
            _apply_headers(route, http.headers)
        if http.fault is not None:
            route.typed_per_filter_config[FAULT_FILTER_NAME].CopyFrom(
                pack(fault_config(http.fault))
            )
        if http.cors_policy is not None:
            route.typed_per_filter_config[CORS_FILTER_NAME].CopyFrom(
                pack(cors_config(http.cors_policy))
            )
        return route

    def _forward(self, route: rc.Route, http: HTTPRoute, block: HTTPMatchRequest | None) -> None:
        resolved = [
            (self._destinations.resolve(d.destination, self._namespace, self._listener_port), d)
            for d in http.route
        ]
        targets = [(t, d) for t, d in resolved if isinstance(t, ClusterTarget)]
        problems = [t.reason for t, _ in resolved if isinstance(t, Unroutable)]
        if not targets:
            route.direct_response.CopyFrom(
                unroutable_response(problems or ["the route has no destination"])
            )
            return
        action = rc.RouteAction()
        if len(targets) == 1:
            target, destination = targets[0]
            action.cluster = target.cluster
            if destination.headers is not None:
                _apply_headers(route, destination.headers)
        else:
            weights = [d.weight or 0 for _, d in targets]
            if sum(weights) == 0:
                weights = [1] * len(targets)
            for (target, destination), weight in zip(targets, weights, strict=True):
                cluster_weight = rc.WeightedCluster.ClusterWeight(
                    name=target.cluster, weight=wrappers_pb2.UInt32Value(value=weight)
                )
                if destination.headers is not None:
                    _apply_headers(cluster_weight, destination.headers)
                action.weighted_clusters.clusters.append(cluster_weight)
        hashes: list[rc.RouteAction.HashPolicy] = []
        for target, _ in targets:
            if target.consistent_hash is not None:
                policy = hash_policy(target.consistent_hash)
                if policy not in hashes:
                    hashes.append(policy)
        action.hash_policy.extend(hashes)
        # Istio disables Envoy's 15 s default route timeout unless the route sets one.
        action.timeout.CopyFrom(duration_from_seconds(http.timeout or 0.0))
        policy = retry_policy(http.retries)
        if policy is not None:
            action.retry_policy.CopyFrom(policy)
        action.request_mirror_policies.extend(self._mirror_policies(http))
        if http.rewrite is not None:
            self._rewrite(action, http.rewrite, block)
        route.route.CopyFrom(action)

    def _mirror_policies(self, http: HTTPRoute) -> list[rc.RouteAction.RequestMirrorPolicy]:
        """Istio's: a runtime fraction per mirror, its traces not sampled; 0% mirrors nothing.

        Validation rejects mirror destinations that do not resolve; one that still does not
        (config that was never validated) is left out rather than failing the route.
        """
        policies = []
        for mirror in http.mirrors:
            target = self._destinations.resolve(
                mirror.destination, self._namespace, self._listener_port
            )
            if mirror.percent <= 0 or not isinstance(target, ClusterTarget):
                continue
            policy = rc.RouteAction.RequestMirrorPolicy(
                cluster=target.cluster, trace_sampled=wrappers_pb2.BoolValue(value=False)
            )
            policy.runtime_fraction.default_value.CopyFrom(percent_to_fraction(mirror.percent))
            policies.append(policy)
        return policies

    @staticmethod
    def _rewrite(action: rc.RouteAction, rewrite: Rewrite, block: HTTPMatchRequest | None) -> None:
        if rewrite.uri is not None:
            uri = block.uri if block is not None else None
            if uri is None or uri.kind == "prefix":
                action.prefix_rewrite = rewrite.uri
            else:
                action.regex_rewrite.pattern.regex = _WHOLE_PATH
                action.regex_rewrite.substitution = rewrite.uri
        if rewrite.authority is not None:
            action.host_rewrite_literal = rewrite.authority

    def default_route(self, hostname: str) -> rc.Route:
        """Without a VirtualService: everything to the whole service, with Istio's defaults."""
        return self._route(
            HTTPRoute(route=(RouteDestination(destination=Destination(host=hostname)),)), None
        )


# --- outbound ---------------------------------------------------------------------------------


def unknown_host_virtual_host(*, connect: bool = False) -> rc.VirtualHost:
    """The catch-all; with ``connect`` (the sidecars' outbound) it also refuses CONNECTs."""
    response = rc.DirectResponseAction(
        status=404,
        body_format=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=UNKNOWN_HOST_BODY)
        ),
    )
    routes = [rc.Route(match=rc.RouteMatch(prefix="/"), direct_response=response)]
    if connect:
        routes.insert(0, refused_connect_route())
    return rc.VirtualHost(name="unknown_host", domains=["*"], routes=routes)


SourceCondition = tuple[frozenset[tuple[str, str]], str | None]


def _source_condition(block: HTTPMatchRequest | L4MatchAttributes) -> SourceCondition:
    return (frozenset(block.source_labels.items()), block.source_namespace)


class VirtualServiceRoutes:
    """Every VirtualService's HTTP routes with delegates in place, worked out once per view.

    Also knows the conditions on the calling proxy (``sourceLabels``, ``sourceNamespace``)
    that sidecar routes use: proxies that agree on all of them get the same routes, so the
    outbound route configuration is built once per distinct answer, not once per proxy.
    """

    def __init__(self, view: MeshView) -> None:
        services = view.config.virtual_services
        by_name = virtual_services_by_name(services)
        self._http = {id(vs): (vs, expand_delegates(vs, by_name)) for vs in services}
        mesh: dict[str, VirtualService] = {}
        for vs in services:
            if vs.applies_to_mesh:
                for host in vs.hosts:
                    # Validation refuses two mesh VirtualServices for one host (sidecars do
                    # not merge them); the first is kept if that ever slips through.
                    mesh.setdefault(qualify_host(host, vs.meta.namespace), vs)
        self._mesh_by_host: Mapping[str, VirtualService] = mesh
        conditions: dict[SourceCondition, None] = {}
        for vs in {id(vs): vs for vs in mesh.values()}.values():
            for http in self.http_of(vs):
                for block in http.match:
                    if block.depends_on_source:
                        conditions.setdefault(_source_condition(block))
            # A CONNECT to a TCP port takes the tcp routes, which may ask for the caller too.
            for tcp in vs.tcp:
                for match in tcp.match:
                    if match.source_labels or match.source_namespace is not None:
                        conditions.setdefault(_source_condition(match))
        self.source_conditions: tuple[SourceCondition, ...] = tuple(conditions)

    def http_of(self, service: VirtualService) -> tuple[HTTPRoute, ...]:
        entry = self._http.get(id(service))
        return entry[1] if entry is not None and entry[0] is service else service.http

    def mesh_virtual_service(self, hostname: str) -> VirtualService | None:
        return self._mesh_by_host.get(hostname)

    def source_signature(self, node: ProxyNode) -> tuple[bool, ...]:
        """Which of the source conditions ``node`` meets: equal signatures, equal routes."""
        return tuple(
            HTTPMatchRequest(
                source_labels=dict(labels), source_namespace=namespace
            ).applies_to_source(node.labels, node.namespace)
            for labels, namespace in self.source_conditions
        )

    def source_filter(self, signature: tuple[bool, ...]) -> SourceFilter:
        met = {c for c, ok in zip(self.source_conditions, signature, strict=True) if ok}
        return lambda block: not block.depends_on_source or _source_condition(block) in met


TcpTargets = Callable[[str, int], Sequence[WeightedCluster]]
"""(hostname, port) -> the clusters a TCP connection to it is split between."""


def proxy_source_filter(node: ProxyNode) -> SourceFilter:
    return lambda block: block.applies_to_source(node.labels, node.namespace)


def no_source(block: HTTPMatchRequest) -> bool:
    """For routes built for no proxy in particular: only blocks that ask nothing of the caller."""
    return not block.depends_on_source


def _service_domains(service: Service, port: int, with_bare_names: bool) -> list[str]:
    """The names a caller may use, as Kubernetes DNS resolves them and Istio routes them:
    ``reviews``, ``reviews.default``, ``reviews.default.svc`` and the qualified name."""
    names = [service.hostname]
    if service.short_name and service.short_name != service.hostname:
        names.append(service.short_name)
        in_namespace = f"{service.short_name}.{service.namespace}"
        if service.hostname == f"{in_namespace}.{CLUSTER_DOMAIN}":
            names.extend([in_namespace, f"{in_namespace}.svc"])
    domains = [f"{name}:{port}" for name in names]
    if with_bare_names:
        domains = names + domains
    return domains


def _takes_bare_names(service: Service, port: int) -> bool:
    """A Host without a port means port 80, or the service's only port."""
    if len(service.ports) == 1:
        return True
    return port == 80


def build_outbound_route_config(
    view: MeshView,
    destinations: DestinationIndex | None = None,
    routes: VirtualServiceRoutes | None = None,
    source: SourceFilter = no_source,
    tcp_targets: TcpTargets | None = None,
) -> route_pb2.RouteConfiguration:
    """One virtual host per service port, plus the catch-all that names unknown hosts.

    Each takes CONNECT (``connect_tunnel``): a port that carries HTTP gets its routes after
    the CONNECT route; a TCP or TLS port gets only the CONNECT route, under ``host:port``
    (a CONNECT always names the port).

    ``source`` says which source-dependent match blocks the proxies receiving this
    configuration get (see ``VirtualServiceRoutes.source_filter``); ``tcp_targets`` where a
    CONNECT to a TCP or TLS port goes for them (their ``tcp`` routes; unset, the port's own
    cluster).

    Envoy NACKs a route configuration in which two virtual hosts share a domain, so a domain
    already claimed (two services with one short name in different namespaces) is skipped.
    """
    index = destinations or DestinationIndex(view)
    table = routes or VirtualServiceRoutes(view)
    # A service's own name always wins over another's shorter alias of it.
    claimed: set[str] = {"*", *view.services}
    virtual_hosts: list[rc.VirtualHost] = []
    for hostname in sorted(view.services):
        service = view.services[hostname]
        virtual_service = table.mesh_virtual_service(hostname)
        for service_port in sorted(service.ports, key=lambda p: p.number):
            port = service_port.number
            http_port = routed_as_http(service_port.protocol)
            bare_names = http_port and _takes_bare_names(service, port)
            domains = [
                d
                for d in _service_domains(service, port, bare_names)
                if d not in claimed or d == hostname
            ]
            claimed.update(domains)
            if not domains:
                continue
            name = hostname if len(service.ports) == 1 else f"{hostname}:{port}"
            if not http_port:
                targets = (
                    tcp_targets(hostname, port)
                    if tcp_targets is not None
                    else (WeightedCluster(outbound_cluster_name(port, hostname)),)
                )
                tunnel = opaque_connect_route(targets)
                virtual_hosts.append(rc.VirtualHost(name=name, domains=domains, routes=[tunnel]))
                continue
            namespace = virtual_service.meta.namespace if virtual_service else service.namespace
            builder = RouteBuilder(index, namespace, RouteScope(port, source=source), port)
            http = table.http_of(virtual_service) if virtual_service is not None else ()
            if http:
                routes_here = [r for route in http for r in builder.build(route)]
            else:
                routes_here = [builder.default_route(hostname)]
            virtual_hosts.append(
                rc.VirtualHost(name=name, domains=domains, routes=[tunnel_route(), *routes_here])
            )
    virtual_hosts.append(unknown_host_virtual_host(connect=True))
    return route_pb2.RouteConfiguration(
        name=OUTBOUND_ROUTE_CONFIG,
        virtual_hosts=virtual_hosts,
    )


def build_upstream_route_config(
    name: str,
    view: MeshView,
    node: ProxyNode,
    hostname: str,
    port: int,
    destinations: DestinationIndex | None = None,
    routes: VirtualServiceRoutes | None = None,
) -> route_pb2.RouteConfiguration:
    """An upstream local port of ``node`` that goes to one HTTP service port: that port's
    routes under any Host (the app may send ``localhost:<port>``)."""
    index = destinations or DestinationIndex(view)
    table = routes or VirtualServiceRoutes(view)
    virtual_service = table.mesh_virtual_service(hostname)
    service = view.services.get(hostname)
    namespace = (
        virtual_service.meta.namespace
        if virtual_service is not None
        else (service.namespace if service is not None else node.namespace)
    )
    builder = RouteBuilder(
        index, namespace, RouteScope(port, source=proxy_source_filter(node)), port
    )
    http = table.http_of(virtual_service) if virtual_service is not None else ()
    if http:
        built = [r for route in http for r in builder.build(route)]
    else:
        built = [builder.default_route(hostname)]
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[rc.VirtualHost(name=hostname, domains=["*"], routes=built)]
    )


# --- gateways ---------------------------------------------------------------------------------


def build_gateway_route_configs(
    view: MeshView,
    node: ProxyNode,
    destinations: DestinationIndex | None = None,
    routes: VirtualServiceRoutes | None = None,
) -> tuple[route_pb2.RouteConfiguration, ...]:
    """One per filter chain of each gateway port (see ``gateway_chains``): ``http.<port>``
    for its plaintext servers, one of its own for each TLS server.

    Several VirtualServices naming one host on a gateway are merged as Istio merges them:
    one virtual host whose routes are those of each VirtualService, in config order.
    """
    index = destinations or DestinationIndex(view)
    table = routes or VirtualServiceRoutes(view)
    source = proxy_source_filter(node)
    return tuple(
        _gateway_route_config(view, index, table, source, port, chain.route_config, chain.servers)
        for port, servers in http_servers_by_port(view, node).items()
        for chain in gateway_chains(port, servers)
    )


def _gateway_route_config(
    view: MeshView,
    index: DestinationIndex,
    table: VirtualServiceRoutes,
    source: SourceFilter,
    port: int,
    name: str,
    servers: Sequence[tuple[Gateway, GatewayServer]],
) -> route_pb2.RouteConfiguration:
    """The virtual hosts of ``servers`` (of one chain), and of no other server."""
    # host -> the VirtualServices routing it here, in config order, with their routes
    by_host: dict[str, list[tuple[VirtualService, list[rc.Route]]]] = {}
    for virtual_service in view.config.virtual_services:
        bound = [(g, s) for g, s in servers if binds_to(virtual_service, g)]
        http = table.http_of(virtual_service)
        if not bound or not http:
            continue
        hosts = [
            host
            for host in virtual_service.hosts
            if any(server_allows(server, host) for _, server in bound)
        ]
        if not hosts:
            continue
        scope = RouteScope(port, frozenset(gateway_binding(g) for g, _ in bound), source)
        builder = RouteBuilder(index, virtual_service.meta.namespace, scope)
        built = [r for route in http for r in builder.build(route)]
        for host in hosts:
            by_host.setdefault(host.lower(), []).append((virtual_service, built))
    # Hosts routed by the same VirtualServices share one virtual host (and its routes).
    grouped: dict[tuple[int, ...], list[str]] = {}
    for host, sources in by_host.items():
        grouped.setdefault(tuple(id(vs) for vs, _ in sources), []).append(host)
    virtual_hosts: list[rc.VirtualHost] = []
    for hosts in grouped.values():
        sources = by_host[hosts[0]]
        domains: list[str] = []
        for host in hosts:
            domains.extend([host] if host == "*" else [host, f"{host}:{port}"])
        virtual_host = rc.VirtualHost(
            name="+".join(f"{vs.meta.namespace}/{vs.meta.name}" for vs, _ in sources),
            domains=domains,
            routes=[r for _, built in sources for r in built],
        )
        # httpsRedirect: a plaintext request for the server's hosts gets a 301 to https.
        if any(s.https_redirect and server_allows(s, hosts[0]) for _, s in servers):
            virtual_host.require_tls = rc.VirtualHost.ALL
        virtual_hosts.append(virtual_host)
    if "*" not in by_host:
        virtual_hosts.append(unknown_host_virtual_host())
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=virtual_hosts)
