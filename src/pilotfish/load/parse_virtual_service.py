"""networking.istio.io VirtualService -> ``model.VirtualService`` (the HTTP subset we route)."""

from __future__ import annotations

import ipaddress
import re

from pilotfish.load.dns_names import DNS_LABEL
from pilotfish.load.fields import NOT_IMPLEMENTED_PREFIX, FieldReader, Fields, describe
from pilotfish.load.http_headers import (
    added_header_value_problem,
    header_name_problem,
    header_value_problem,
    is_ascii_decimal,
    modifiable_header_problem,
)
from pilotfish.load.regex_check import re2_problem
from pilotfish.load.yaml_source import index_path, join_path
from pilotfish.model.diagnostics import Severity
from pilotfish.model.resources import (
    ISTIO_DEFAULT_RETRY_ATTEMPTS,
    CorsPolicy,
    Delegate,
    Destination,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    L4MatchAttributes,
    Meta,
    MirrorPolicy,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    TCPRoute,
    TLSRoute,
    VirtualService,
)

SPEC_FIELDS = ("hosts", "gateways", "http", "tcp", "tls")
SPEC_NOT_IMPLEMENTED = {"exportTo": "the VirtualService is visible to every namespace"}
L4_ROUTE_FIELDS = ("match", "route")
L4_MATCH_FIELDS = ("destinationSubnets", "port", "sourceLabels", "sourceNamespace", "gateways")
TLS_MATCH_FIELDS = ("sniHosts", *L4_MATCH_FIELDS)
# Without service addresses (explicit interception has none) a connection's destination
# address is the sidecar's own loopback port: a block asking for a subnet cannot be told.
DESTINATION_SUBNETS_NOT_CARRIED = (
    f"{NOT_IMPLEMENTED_PREFIX} (services have no addresses to match): "
    "this match block never matches"
)
_WILDCARD_FIRST_LABEL = re.compile(r"\*|(\*|\*-)?[a-z0-9]([-a-z0-9]*[a-z0-9])?")

ROUTE_FIELDS = (
    "name",
    "match",
    "route",
    "redirect",
    "directResponse",
    "rewrite",
    "timeout",
    "retries",
    "headers",
    "fault",
    "delegate",
    "mirror",
    "mirrors",
    "mirrorPercent",
    "mirrorPercentage",
    "corsPolicy",
)
ROUTE_NOT_IMPLEMENTED: tuple[str, ...] = ()
ROUTE_ACTIONS = ("route", "redirect", "directResponse")

MATCH_FIELDS = (
    "name",
    "uri",
    "method",
    "authority",
    "headers",
    "queryParams",
    "scheme",
    "port",
    "sourceLabels",
    "gateways",
    "ignoreUriCase",
    "withoutHeaders",
    "sourceNamespace",
)
# statPrefix only names Envoy stats; ignoring it never changes which traffic a route takes.
# Every other match condition is implemented: an ignored one would widen the route.
MATCH_NOT_IMPLEMENTED = ("statPrefix",)

# Istio's supportedCORSMethods.
CORS_METHODS = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "CONNECT", "TRACE"}
)
CORS_FIELDS = (
    "allowOrigins",
    "allowOrigin",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
    "allowCredentials",
    "unmatchedPreflights",
)
UNMATCHED_PREFLIGHTS = ("UNSPECIFIED", "FORWARD", "IGNORE")
DESTINATION_FIELDS = ("host", "subset", "port")
STRING_MATCH_KINDS = ("exact", "prefix", "regex")

RETRY_NOT_IMPLEMENTED = {
    "retryRemoteLocalities": "retries go to any endpoint, whatever its locality",
    "retryIgnorePreviousHosts": "a retry may go to the endpoint that just failed",
    "backoff": "Envoy's default backoff (25 ms base) is used between retries",
}
# Envoy's router retry conditions (x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
# Envoy reads num_retries as a uint32, but no real policy retries one request more than a
# handful of times; a cap far above any sane value still catches a pasted timestamp or an
# extra zero before it multiplies load on an already failing backend.
MAX_RETRY_ATTEMPTS = 10_000

_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")

AUTHORITY = ":authority"
REDIRECT_CODES = (301, 302, 303, 307, 308)
# Real HTTPRedirect fields that translation does not carry yet, and what stays unchanged.
REDIRECT_NOT_IMPLEMENTED = {
    "scheme": "scheme",
    "port": "port",
    "derivePort": "port",
    "prefixRewrite": "path",
}
# Istio's weight is an int32; Envoy adds the weights of a route up in a uint32.
MAX_WEIGHT = 2**31 - 1
HTTP_STATUS_MIN = 200
HTTP_STATUS_MAX = 599


def parse_virtual_service(reader: FieldReader, spec: Fields, meta: Meta) -> VirtualService:
    # Without hosts it is a delegate, used only through a root route's ``delegate``.
    # (an empty list is the same as none, as in protobuf).
    hosts = reader.string_list(spec, "hosts", "spec")
    gateways = reader.string_list(spec, "gateways", "spec")
    if not hosts and gateways:
        reader.error("spec.gateways", "a delegate VirtualService (one without hosts) has none")
    routes: list[HTTPRoute] = []
    for item, path in reader.items(spec, "http", "spec"):
        route = _http_route(reader, item, path)
        if route is not None:
            routes.append(reader.paths.remember(route, path))
    tcp = [
        reader.paths.remember(tcp_route, path)
        for item, path in reader.items(spec, "tcp", "spec")
        if (tcp_route := _tcp_route(reader, item, path)) is not None
    ]
    tls = [
        reader.paths.remember(tls_route, path)
        for item, path in reader.items(spec, "tls", "spec")
        if (tls_route := _tls_route(reader, item, path, hosts, gateways)) is not None
    ]
    if tls and hosts and (not gateways or "mesh" in gateways):
        reader.warning(
            "spec.tls",
            f"{NOT_IMPLEMENTED_PREFIX} at sidecars (only at gateways): a sidecar sends a "
            "connection to a TLS port by its tcp routes, or to the port's whole service",
        )
    if not hosts:
        for section in ("tcp", "tls"):
            if spec.get(section):
                reader.error(
                    f"spec.{section}",
                    f"a delegate VirtualService (one without hosts) has no {section} routes",
                )
    if not any(spec.get(section) for section in ("http", "tcp", "tls")):
        reader.error("spec", "needs http, tcp or tls routes (Istio refuses it too)")
    _check_hosts(reader, hosts, gateways)
    return VirtualService(
        meta=meta,
        hosts=hosts,
        gateways=gateways,
        http=tuple(routes),
        tcp=tuple(tcp),
        tls=tuple(tls),
    )


# --- tcp and tls ------------------------------------------------------------------------------


def _tcp_route(reader: FieldReader, value: object, path: str) -> TCPRoute | None:
    fields = reader.mapping(value, path, L4_ROUTE_FIELDS)
    if fields is None:
        return None
    matches = tuple(
        match
        for item, item_path in reader.items(fields, "match", path)
        if (match := _l4_match(reader, item, item_path, L4_MATCH_FIELDS)) is not None
    )
    return TCPRoute(match=matches, route=_l4_destinations(reader, fields, path, "TCP"))


def _tls_route(
    reader: FieldReader,
    value: object,
    path: str,
    hosts: tuple[str, ...],
    gateways: tuple[str, ...],
) -> TLSRoute | None:
    fields = reader.mapping(value, path, L4_ROUTE_FIELDS)
    if fields is None:
        return None
    if not fields.get("match"):
        # Without one, nothing tells its connections apart by SNI.
        reader.error(join_path(path, "match"), "a TLS route needs at least one match (sniHosts)")
    matches: list[L4MatchAttributes] = []
    for item, item_path in reader.items(fields, "match", path):
        match = _l4_match(reader, item, item_path, TLS_MATCH_FIELDS)
        if match is None:
            continue
        if not match.sni_hosts:
            reader.error(join_path(item_path, "sniHosts"), "a TLS match needs at least one host")
        for index, sni in enumerate(match.sni_hosts):
            sni_path = index_path(join_path(item_path, "sniHosts"), index)
            problem = sni_host_problem(sni, hosts, bound_to_gateway="mesh" not in gateways)
            if problem is None:
                continue
            problem_text, severity = problem
            reader.report(sni_path, problem_text, severity)
        matches.append(match)
    return TLSRoute(match=tuple(matches), route=_l4_destinations(reader, fields, path, "TLS"))


def _l4_match(
    reader: FieldReader, value: object, path: str, known: tuple[str, ...]
) -> L4MatchAttributes | None:
    fields = reader.mapping(value, path, known)
    if fields is None:
        return None
    subnets = reader.string_list(fields, "destinationSubnets", path)
    for index, subnet in enumerate(subnets):
        subnet_path = index_path(join_path(path, "destinationSubnets"), index)
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            reader.error(subnet_path, f'"{subnet}" is not an IP address or CIDR block')
    if subnets:
        reader.warning(join_path(path, "destinationSubnets"), DESTINATION_SUBNETS_NOT_CARRIED)
    source_namespace = reader.string(fields, "sourceNamespace", path)
    if source_namespace is not None and not _is_dns_label(source_namespace):
        reader.error(
            join_path(path, "sourceNamespace"), f'"{source_namespace}" is not a valid namespace'
        )
        source_namespace = None
    source_labels = reader.string_map(fields, "sourceLabels", path)
    for key, label in source_labels.items():
        problem = _label_problem(key, label)
        if problem is not None:
            reader.error(join_path(join_path(path, "sourceLabels"), key), problem)
    sni_hosts = reader.string_list(fields, "sniHosts", path) if "sniHosts" in known else ()
    match = L4MatchAttributes(
        destination_subnets=tuple(s for s in subnets if s),
        port=reader.port(fields, "port", path),
        source_labels=source_labels,
        source_namespace=source_namespace,
        gateways=tuple(g for g in reader.string_list(fields, "gateways", path) if g),
        sni_hosts=tuple(h for h in sni_hosts if h),
    )
    return reader.paths.remember(match, path)


def _l4_destinations(
    reader: FieldReader, fields: Fields, path: str, layer: str
) -> tuple[RouteDestination, ...]:
    """Istio's RouteDestination: a destination and a weight (no header operations at L4)."""
    if not fields.get("route"):
        reader.error(join_path(path, "route"), f"a {layer} route needs at least one destination")
    destinations: list[RouteDestination] = []
    for item, item_path in reader.items(fields, "route", path):
        destination_fields = reader.mapping(item, item_path, ("destination", "weight"))
        if destination_fields is None:
            continue
        weight = reader.integer(
            destination_fields, "weight", item_path, minimum=0, maximum=MAX_WEIGHT
        )
        destination = _destination(reader, destination_fields, "destination", item_path)
        if destination is not None:
            routed = RouteDestination(destination=destination, weight=weight)
            destinations.append(reader.paths.remember(routed, item_path))
    return tuple(destinations)


def sni_host_problem(
    sni: str, hosts: tuple[str, ...], *, bound_to_gateway: bool
) -> tuple[str, Severity] | None:
    """Istio's validateSniHost: a (wildcard) domain within one of the VirtualService's hosts;
    an IP address is accepted with a warning (SNI carries names, few clients send one)."""
    if not _is_wildcard_domain(sni):
        try:
            ipaddress.ip_address(sni)
        except ValueError:
            return f'"{sni}" is not a valid host name', "error"
        return (
            f'"{sni}" is an IP address: SNI carries host names, and most clients send none '
            "for an address",
            "warning",
        )
    if sni == "*" and not bound_to_gateway:
        return '"*" is not allowed for a VirtualService bound to the mesh', "error"
    if any(_sni_within(sni.lower(), host.lower()) for host in hosts if host):
        return None
    return (
        f'"{sni}" is not within any host of this VirtualService ({", ".join(hosts)})',
        "error",
    )


def _is_wildcard_domain(name: str) -> bool:
    """A domain whose first label may be a wildcard (``*``, ``*.example.com``, ``*-v1.x``)."""
    first, _, rest = name.lower().partition(".")
    if len(name) > 255 or not first or len(first) > 63:
        return False
    if not _WILDCARD_FIRST_LABEL.fullmatch(first):
        return False
    labels = rest.split(".") if rest else []
    # As Istio: an all-numeric top-level label is an address, not a name.
    if labels and labels[-1].isdigit():
        return False
    return all(DNS_LABEL.fullmatch(label) for label in labels)


def _sni_within(sni: str, host: str) -> bool:
    """Istio's host.Name.SubsetOf: every name ``sni`` matches, ``host`` matches too."""
    if host == "*":
        return True
    if host.startswith("*"):
        suffix = host[1:]
        return sni.endswith(suffix) if not sni.startswith("*") else sni[1:].endswith(suffix)
    return sni == host


def _check_hosts(reader: FieldReader, hosts: tuple[str, ...], gateways: tuple[str, ...]) -> None:
    """Istio's rules: ``*`` would capture every request of every sidecar, and two hosts of one
    VirtualService may not match the same names (``*.foo.com`` and ``a.foo.com``)."""
    applies_to_mesh = not gateways or "mesh" in gateways
    for index, host in enumerate(hosts):
        if host == "*" and applies_to_mesh:
            reader.error(
                index_path("spec.hosts", index),
                '"*" is not allowed for a VirtualService bound to the mesh '
                "(it would route every request of every sidecar)",
            )
        for earlier in hosts[:index]:
            if host and earlier and hosts_overlap(host, earlier):
                reader.error(
                    index_path("spec.hosts", index),
                    f'"{host}" overlaps "{earlier}", an earlier host of this VirtualService',
                )
                break


def hosts_overlap(first: str, second: str) -> bool:
    """Whether some name matches both hosts, ``*.foo.com`` matching any name under foo.com."""
    if first == second or "*" in (first, second):
        return True
    for wildcard, other in ((first, second), (second, first)):
        if wildcard.startswith("*."):
            suffix = wildcard[1:]
            bare = other[2:] if other.startswith("*.") else other
            if bare.endswith(suffix):
                return True
    return False


def _http_route(reader: FieldReader, value: object, path: str) -> HTTPRoute | None:
    fields = reader.mapping(value, path, ROUTE_FIELDS, ROUTE_NOT_IMPLEMENTED)
    if fields is None:
        return None
    matches = [
        match
        for item, item_path in reader.items(fields, "match", path)
        if (match := _match_request(reader, item, item_path)) is not None
    ]
    destinations = [
        destination
        for item, item_path in reader.items(fields, "route", path)
        if (destination := _route_destination(reader, item, item_path)) is not None
    ]
    if fields.get("route") == []:
        reader.error(join_path(path, "route"), "must not be empty")
    actions = [name for name in ROUTE_ACTIONS if fields.get(name) is not None]
    # A root route's action is its delegate; _delegate refuses any other beside it.
    if len(actions) != 1 and fields.get("delegate") is None:
        found = f" (found {', '.join(actions)})" if actions else ""
        reader.error(path, f"needs exactly one of route, redirect, directResponse{found}")
    if fields.get("rewrite") is not None and fields.get("redirect") is not None:
        reader.error(join_path(path, "rewrite"), "cannot be combined with redirect")
    mirrors = _mirrors(reader, fields, path)
    if mirrors and fields.get("route") is None and fields.get("delegate") is None:
        reader.warning(
            join_path(path, "mirror" if fields.get("mirror") is not None else "mirrors"),
            "only a route that forwards is mirrored; this one answers itself, so nothing is",
        )
    headers = _headers(reader, fields, path, at_route=True)
    rewrite = _rewrite(reader, fields, path)
    authority = _authority_header(fields)
    if authority is not None and headers is not None:
        # Istio turns a request ``:authority`` header into the route's host rewrite.
        if rewrite is not None and rewrite.authority is not None:
            reader.error(
                join_path(path, "rewrite.authority"),
                "cannot be combined with an :authority request header; set one of them",
            )
        else:
            rewrite = Rewrite(uri=rewrite.uri if rewrite else None, authority=authority)
    return HTTPRoute(
        name=reader.string(fields, "name", path),
        match=tuple(matches),
        route=tuple(destinations),
        redirect=_redirect(reader, fields, path),
        direct_response=_direct_response(reader, fields, path),
        rewrite=rewrite,
        timeout=reader.duration(fields, "timeout", path),
        retries=_retries(reader, fields, path),
        headers=headers,
        fault=_fault(reader, fields, path),
        mirrors=mirrors,
        cors_policy=_cors_policy(reader, fields, path),
        delegate=_delegate(reader, fields, path),
    )


# --- mirroring, CORS, delegation ----------------------------------------------------------------


def _destination(reader: FieldReader, fields: Fields, key: str, path: str) -> Destination | None:
    """A ``Destination`` object (host, subset, port.number) found under ``key``."""
    destination_fields = reader.child_mapping(fields, key, path, DESTINATION_FIELDS, required=True)
    if destination_fields is None:
        return None
    destination_path = join_path(path, key)
    host = reader.string(destination_fields, "host", destination_path, required=True)
    subset = reader.string(destination_fields, "subset", destination_path)
    port_fields = reader.child_mapping(destination_fields, "port", destination_path, ("number",))
    port = None
    if port_fields is not None:
        port = reader.port(
            port_fields, "number", join_path(destination_path, "port"), required=True
        )
    if host is None:
        return None
    return Destination(host=host, subset=subset, port=port)


def _percentage(reader: FieldReader, fields: Fields, key: str, path: str) -> float | None:
    """Istio's ``Percent`` message: ``{value: 0..100}`` as a double."""
    percentage = reader.child_mapping(fields, key, path, ("value",))
    if percentage is None:
        return None
    value = reader.number(percentage, "value", join_path(path, key), minimum=0, maximum=100)
    # An explicit but empty Percent is 0 in protobuf: Istio then mirrors nothing.
    return 0.0 if value is None and percentage.get("value") is None else value


def _mirrors(reader: FieldReader, fields: Fields, path: str) -> tuple[MirrorPolicy, ...]:
    """``mirror`` with its percentage, or the newer ``mirrors`` list; Istio refuses both."""
    found: list[MirrorPolicy] = []
    if fields.get("mirror") is not None and fields.get("mirrors") is not None:
        reader.error(join_path(path, "mirrors"), "cannot be combined with mirror")
    if fields.get("mirrorPercentage") is not None and fields.get("mirrorPercent") is not None:
        reader.error(
            join_path(path, "mirrorPercent"), "set mirrorPercentage or mirrorPercent, not both"
        )
    for key in ("mirrorPercent", "mirrorPercentage"):
        if fields.get(key) is not None and fields.get("mirror") is None:
            # Istio accepts it and ignores it: it applies to ``mirror`` only.
            reader.warning(
                join_path(path, key),
                "has no effect without mirror, so nothing is mirrored by it "
                "(with mirrors, set each one's percentage)",
            )
    if fields.get("mirrorPercent") is not None:
        reader.warning(
            join_path(path, "mirrorPercent"), 'deprecated; use "mirrorPercentage: {value: N}"'
        )
    if fields.get("mirror") is not None:
        destination = _destination(reader, fields, "mirror", path)
        percent = _percentage(reader, fields, "mirrorPercentage", path)
        if percent is None:
            legacy = reader.integer(fields, "mirrorPercent", path, minimum=0, maximum=100)
            percent = float(legacy) if legacy is not None else None
        if destination is not None:
            found.append(
                reader.paths.remember(
                    MirrorPolicy(destination, 100.0 if percent is None else percent),
                    join_path(path, "mirror"),
                )
            )
    for item, item_path in reader.items(fields, "mirrors", path):
        mirror = reader.mapping(item, item_path, ("destination", "percentage"))
        if mirror is None:
            continue
        destination = _destination(reader, mirror, "destination", item_path)
        percent = _percentage(reader, mirror, "percentage", item_path)
        if destination is not None:
            policy = MirrorPolicy(destination, 100.0 if percent is None else percent)
            found.append(reader.paths.remember(policy, join_path(item_path, "destination")))
    return tuple(found)


def _cors_policy(reader: FieldReader, fields: Fields, path: str) -> CorsPolicy | None:
    cors = reader.child_mapping(fields, "corsPolicy", path, CORS_FIELDS)
    if cors is None:
        return None
    cors_path = join_path(path, "corsPolicy")
    origins: list[StringMatch] = []
    for item, item_path in reader.items(cors, "allowOrigins", cors_path):
        match = _string_match(reader, item, item_path)
        if match is not None:
            if not match.value:
                reader.error(item_path, "an empty origin matches nothing")
            else:
                origins.append(match)
    legacy = reader.string_list(cors, "allowOrigin", cors_path)
    if legacy:
        if cors.get("allowOrigins") is not None:
            reader.error(
                join_path(cors_path, "allowOrigin"), "set allowOrigins or allowOrigin, not both"
            )
        else:
            reader.warning(
                join_path(cors_path, "allowOrigin"),
                'deprecated; use "allowOrigins" (here taken as exact matches)',
            )
            origins.extend(StringMatch("exact", origin) for origin in legacy if origin)
    methods = reader.string_list(cors, "allowMethods", cors_path)
    for index, method in enumerate(methods):
        if method and method not in CORS_METHODS:
            reader.error(
                index_path(join_path(cors_path, "allowMethods"), index),
                f'"{method}" is not a supported HTTP method ({", ".join(sorted(CORS_METHODS))})',
            )
    headers = {
        key: _cors_header_names(reader, cors, key, cors_path)
        for key in ("allowHeaders", "exposeHeaders")
    }
    max_age = reader.duration(cors, "maxAge", cors_path, allow_zero=True)
    if max_age is not None and max_age != int(max_age):
        reader.error(join_path(cors_path, "maxAge"), "is accurate only to whole seconds")
    preflights = reader.choice(cors, "unmatchedPreflights", cors_path, UNMATCHED_PREFLIGHTS)
    return CorsPolicy(
        allow_origins=tuple(origins),
        allow_methods=tuple(m for m in methods if m in CORS_METHODS),
        allow_headers=headers["allowHeaders"],
        expose_headers=headers["exposeHeaders"],
        max_age=max_age,
        allow_credentials=reader.boolean(cors, "allowCredentials", cors_path),
        forward_unmatched_preflights=preflights != "IGNORE",
    )


def _cors_header_names(reader: FieldReader, fields: Fields, key: str, path: str) -> tuple[str, ...]:
    names = reader.string_list(fields, key, path)
    accepted: list[str] = []
    for index, name in enumerate(names):
        if not name:
            continue
        # "*" is the wildcard CORS allows in header lists.
        problem = None if name == "*" else header_name_problem(name)
        if problem is not None:
            reader.error(index_path(join_path(path, key), index), problem)
        else:
            accepted.append(name)
    return tuple(accepted)


def _delegate(reader: FieldReader, fields: Fields, path: str) -> Delegate | None:
    delegate = reader.child_mapping(fields, "delegate", path, ("name", "namespace"))
    if delegate is None:
        return None
    delegate_path = join_path(path, "delegate")
    name = reader.string(delegate, "name", delegate_path, required=True)
    namespace = reader.string(delegate, "namespace", delegate_path)
    if namespace is not None and not _is_dns_label(namespace):
        reader.error(
            join_path(delegate_path, "namespace"), f'"{namespace}" is not a valid namespace'
        )
        namespace = None
    for action in ("route", "redirect", "directResponse"):
        if fields.get(action) is not None:
            reader.error(join_path(path, action), "a route with delegate must not set it")
    if name is None:
        return None
    return reader.paths.remember(Delegate(name=name, namespace=namespace), delegate_path)


def _authority_header(fields: Fields) -> str | None:
    """The ``:authority`` a route's request headers set or add (already checked)."""
    headers = fields.get("headers")
    request = headers.get("request") if isinstance(headers, dict) else None
    if not isinstance(request, dict):
        return None
    for operation in ("set", "add"):
        values = request.get(operation)
        for name, value in values.items() if isinstance(values, dict) else ():
            named = isinstance(name, str) and name.lower() == AUTHORITY
            if named and isinstance(value, str) and header_value_problem(value) is None:
                return value
    return None


# --- match ------------------------------------------------------------------------------------


def _match_request(reader: FieldReader, value: object, path: str) -> HTTPMatchRequest | None:
    fields = reader.mapping(value, path, MATCH_FIELDS, MATCH_NOT_IMPLEMENTED)
    if fields is None:
        return None
    source_namespace = reader.string(fields, "sourceNamespace", path)
    if source_namespace is not None and not _is_dns_label(source_namespace):
        reader.error(
            join_path(path, "sourceNamespace"), f'"{source_namespace}" is not a valid namespace'
        )
        source_namespace = None
    source_labels = reader.string_map(fields, "sourceLabels", path)
    for key, value in source_labels.items():
        problem = _label_problem(key, value)
        if problem is not None:
            reader.error(join_path(join_path(path, "sourceLabels"), key), problem)
    uri = _optional_string_match(reader, fields, "uri", path)
    ignore_uri_case = bool(reader.boolean(fields, "ignoreUriCase", path))
    if ignore_uri_case and uri is not None and uri.kind == "regex":
        reader.warning(
            join_path(path, "ignoreUriCase"),
            "Envoy matches a regex uri case-sensitively all the same; write (?i) in the regex",
        )
    return HTTPMatchRequest(
        name=reader.string(fields, "name", path),
        uri=uri,
        method=_optional_string_match(reader, fields, "method", path),
        authority=_optional_string_match(reader, fields, "authority", path),
        headers=_string_match_map(reader, fields, "headers", path),
        query_params=_string_match_map(reader, fields, "queryParams", path),
        scheme=_optional_string_match(reader, fields, "scheme", path),
        without_headers=_string_match_map(reader, fields, "withoutHeaders", path),
        ignore_uri_case=ignore_uri_case,
        port=reader.port(fields, "port", path),
        source_labels=source_labels,
        source_namespace=source_namespace,
        gateways=tuple(g for g in reader.string_list(fields, "gateways", path) if g),
    )


def _is_dns_label(text: str) -> bool:
    return DNS_LABEL.fullmatch(text) is not None


def _label_problem(key: str, value: str) -> str | None:
    """Kubernetes label syntax: an optional DNS prefix and a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and not all(_is_dns_label(part) for part in prefix.split(".")):
        return f'label key prefix "{prefix}" is not a DNS subdomain'
    if not _LABEL_VALUE.fullmatch(name) or not name:
        return f'"{name}" is not a valid label name'
    if value and not _LABEL_VALUE.fullmatch(value):
        return f'"{value}" is not a valid label value'
    return None


def _optional_string_match(
    reader: FieldReader, fields: Fields, key: str, path: str
) -> StringMatch | None:
    value = fields.get(key)
    if value is None:
        return None
    return _string_match(reader, value, join_path(path, key), is_path=key == "uri")


def _string_match_map(
    reader: FieldReader, fields: Fields, key: str, path: str
) -> dict[str, StringMatch]:
    value = fields.get(key)
    if value is None:
        return {}
    map_path = join_path(path, key)
    if not isinstance(value, dict):
        reader.error(map_path, f"expected a mapping of name to match, got {describe(value)}")
        return {}
    found: dict[str, StringMatch] = {}
    for name, condition in value.items():
        entry_path = join_path(map_path, str(name))
        if not isinstance(name, str) or not name:
            reader.error(entry_path, "names must be non-empty strings")
            continue
        # Envoy matches pseudo-headers such as ":method" too; the rest is an ordinary name.
        is_header = key in ("headers", "withoutHeaders")
        problem = header_name_problem(name.removeprefix(":")) if is_header else None
        if problem is not None:
            reader.error(entry_path, problem)
            continue
        if key == "headers" and condition == {}:
            # Istio's presence match. Envoy fails any string match on an absent header, and
            # ".*" matches every value a header can hold (no CR or LF), so this is exact.
            found[name] = StringMatch("regex", ".*")
            continue
        match = _string_match(reader, condition, entry_path)
        if match is not None:
            found[name] = match
    return found


def _string_match(
    reader: FieldReader, value: object, path: str, *, is_path: bool = False
) -> StringMatch | None:
    """One exact/prefix/regex condition; ``is_path`` for ``uri``, whose empty prefix Envoy
    accepts (it matches every path), unlike the empty prefix of a header matcher."""
    fields = reader.mapping(value, path, STRING_MATCH_KINDS)
    if fields is None:
        return None
    kinds = [kind for kind in STRING_MATCH_KINDS if fields.get(kind) is not None]
    if len(kinds) != 1:
        reader.error(path, "needs exactly one of exact, prefix, regex")
        return None
    kind = kinds[0]
    text = reader.string(fields, kind, path)
    if text is None:
        return None
    if not text and (kind == "regex" or (kind == "prefix" and not is_path)):
        reader.error(join_path(path, kind), f"{kind} must not be empty (Envoy rejects it)")
        return None
    if kind == "regex":
        problem = re2_problem(text)
        if problem is not None:
            reader.error(join_path(path, kind), problem)
            return None
        return StringMatch("regex", text)
    return StringMatch("exact" if kind == "exact" else "prefix", text)


# --- destinations -----------------------------------------------------------------------------


def _route_destination(reader: FieldReader, value: object, path: str) -> RouteDestination | None:
    fields = reader.mapping(value, path, ("destination", "weight", "headers"))
    if fields is None:
        return None
    # Weights are relative (Istio accepts 1/3 and 550/500); validation warns when they do
    # not sum to 100.
    weight = reader.integer(fields, "weight", path, minimum=0, maximum=MAX_WEIGHT)
    headers = _headers(reader, fields, path)
    destination = _destination(reader, fields, "destination", path)
    if destination is None:
        return None
    routed = RouteDestination(destination=destination, weight=weight, headers=headers)
    return reader.paths.remember(routed, path)


def _headers(
    reader: FieldReader, fields: Fields, path: str, *, at_route: bool = False
) -> Headers | None:
    header_fields = reader.child_mapping(fields, "headers", path, ("request", "response"))
    if header_fields is None:
        return None
    headers_path = join_path(path, "headers")
    return Headers(
        request=_header_operations(
            reader,
            header_fields,
            "request",
            headers_path,
            authority="route" if at_route else "destination",
        ),
        response=_header_operations(reader, header_fields, "response", headers_path),
    )


def _header_operations(
    reader: FieldReader, fields: Fields, key: str, path: str, *, authority: str | None = None
) -> HeaderOperations:
    """``authority`` says where request headers may name ``:authority``, which Istio allows
    in the request headers a route sets or adds."""
    operations = reader.child_mapping(fields, key, path, ("set", "add", "remove"))
    if operations is None:
        return HeaderOperations()
    operations_path = join_path(path, key)
    return HeaderOperations(
        set=_header_values(reader, operations, "set", operations_path, authority),
        add=_header_values(reader, operations, "add", operations_path, authority),
        remove=_removed_headers(reader, operations, operations_path),
    )


def _header_values(
    reader: FieldReader, fields: Fields, key: str, path: str, authority: str | None = None
) -> dict[str, str]:
    values_path = join_path(path, key)
    accepted: dict[str, str] = {}
    for name, value in reader.string_map(fields, key, path).items():
        if authority is not None and name.lower() == AUTHORITY:
            problem = header_value_problem(value)
            if problem is not None:
                reader.error(join_path(values_path, name), problem)
            elif authority == "destination":
                reader.warning(
                    join_path(values_path, name),
                    f"{NOT_IMPLEMENTED_PREFIX} per destination: requests keep their authority "
                    "(set it on the route's headers, or with rewrite.authority)",
                )
            continue
        problem = modifiable_header_problem(name) or added_header_value_problem(value)
        if problem is not None:
            reader.error(join_path(values_path, name), problem)
        else:
            accepted[name] = value
    return accepted


def _removed_headers(reader: FieldReader, fields: Fields, path: str) -> tuple[str, ...]:
    names = reader.string_list(fields, "remove", path)
    for index, name in enumerate(names):
        problem = modifiable_header_problem(name) if name else None
        if problem is not None:
            reader.error(index_path(join_path(path, "remove"), index), problem)
    return tuple(name for name in names if name and modifiable_header_problem(name) is None)


# --- other actions ------------------------------------------------------------------------------


def _redirect(reader: FieldReader, fields: Fields, path: str) -> Redirect | None:
    redirect = reader.child_mapping(
        fields,
        "redirect",
        path,
        ("uri", "authority", "redirectCode", *REDIRECT_NOT_IMPLEMENTED),
    )
    if redirect is None:
        return None
    redirect_path = join_path(path, "redirect")
    uri = _header_value_string(reader, redirect, "uri", redirect_path)
    authority = _header_value_string(reader, redirect, "authority", redirect_path)
    ignored = [key for key in REDIRECT_NOT_IMPLEMENTED if redirect.get(key) is not None]
    if uri is None and authority is None and not ignored:
        reader.error(redirect_path, "needs uri, authority, scheme, port or prefixRewrite")
    if redirect.get("uri") is not None and redirect.get("prefixRewrite") is not None:
        reader.error(join_path(redirect_path, "prefixRewrite"), "cannot be combined with uri")
    scheme = reader.choice(redirect, "scheme", redirect_path, ("http", "https"))
    if redirect.get("port") is not None and redirect.get("derivePort") is not None:
        reader.error(join_path(redirect_path, "derivePort"), "cannot be combined with port")
    reader.port(redirect, "port", redirect_path)
    reader.choice(
        redirect, "derivePort", redirect_path, ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")
    )
    reader.string(redirect, "prefixRewrite", redirect_path)
    for key in ignored:
        unchanged = "the redirect keeps the request's " + REDIRECT_NOT_IMPLEMENTED[key]
        if uri is None and authority is None:
            unchanged += ", so it sends clients back to the URL they asked for"
        if key != "scheme" or scheme is not None:
            reader.warning(join_path(redirect_path, key), f"{NOT_IMPLEMENTED_PREFIX}: {unchanged}")
    code = reader.integer(redirect, "redirectCode", redirect_path)
    if code is not None and code not in REDIRECT_CODES:
        reader.error(
            join_path(redirect_path, "redirectCode"),
            f"{code} must be one of {', '.join(map(str, REDIRECT_CODES))}",
        )
        code = None
    return Redirect(uri=uri, authority=authority, redirect_code=code or 301)


def _direct_response(reader: FieldReader, fields: Fields, path: str) -> DirectResponse | None:
    response = reader.child_mapping(fields, "directResponse", path, ("status", "body"))
    if response is None:
        return None
    response_path = join_path(path, "directResponse")
    status = reader.integer(
        response,
        "status",
        response_path,
        required=True,
        minimum=HTTP_STATUS_MIN,
        maximum=HTTP_STATUS_MAX,
    )
    body_fields = reader.child_mapping(
        response,
        "body",
        response_path,
        ("string",),
        {"bytes": "the response is sent without this body"},
    )
    body = None
    if body_fields is not None:
        body = reader.string(body_fields, "string", join_path(response_path, "body"))
    if status is None:
        return None
    return DirectResponse(status=status, body=body)


def _rewrite(reader: FieldReader, fields: Fields, path: str) -> Rewrite | None:
    rewrite = reader.child_mapping(
        fields,
        "rewrite",
        path,
        ("uri", "authority"),
        {"uriRegexRewrite": "the path is forwarded as it was requested"},
    )
    if rewrite is None:
        return None
    rewrite_path = join_path(path, "rewrite")
    written = fields.get("rewrite")
    if isinstance(written, dict) and not any(
        written.get(key) for key in ("uri", "authority", "uriRegexRewrite")
    ):
        reader.error(rewrite_path, "needs uri, authority or uriRegexRewrite")
    return Rewrite(
        uri=_header_value_string(reader, rewrite, "uri", rewrite_path),
        authority=_header_value_string(reader, rewrite, "authority", rewrite_path),
    )


def _header_value_string(reader: FieldReader, fields: Fields, key: str, path: str) -> str | None:
    """A string Envoy puts into a request header (path or authority) as it is."""
    text = reader.string(fields, key, path)
    problem = header_value_problem(text) if text is not None else None
    if problem is not None:
        reader.error(join_path(path, key), problem)
        return None
    return text


def _retries(reader: FieldReader, fields: Fields, path: str) -> Retries | None:
    retries = reader.child_mapping(
        fields,
        "retries",
        path,
        ("attempts", "perTryTimeout", "retryOn"),
        RETRY_NOT_IMPLEMENTED,
    )
    if retries is None:
        return None
    retries_path = join_path(path, "retries")
    attempts = reader.integer(
        retries, "attempts", retries_path, minimum=0, maximum=MAX_RETRY_ATTEMPTS
    )
    if attempts == 0:
        for key in ("perTryTimeout", "retryOn", "retryRemoteLocalities"):
            if retries.get(key) is not None:
                reader.error(
                    join_path(retries_path, key),
                    "has no effect with attempts: 0, which turns retries off",
                )
    retry_on = reader.string(retries, "retryOn", retries_path)
    if retry_on is not None:
        problem = retry_on_problem(retry_on)
        if problem is not None:
            reader.error(join_path(retries_path, "retryOn"), problem)
            retry_on = None
    return Retries(
        attempts=ISTIO_DEFAULT_RETRY_ATTEMPTS if attempts is None else attempts,
        per_try_timeout=reader.duration(retries, "perTryTimeout", retries_path),
        retry_on=retry_on,
    )


def retry_on_problem(retry_on: str) -> str | None:
    """Why a ``retryOn`` list is invalid: each item is an Envoy condition or an HTTP status."""
    for raw in retry_on.split(","):
        condition = raw.strip()
        if not condition:
            return "empty retry condition in comma-separated list"
        if is_ascii_decimal(condition):
            if not 100 <= int(condition) <= HTTP_STATUS_MAX:
                return f'"{condition}" is not an HTTP status code'
        elif condition not in RETRY_CONDITIONS:
            return f'unknown retry condition "{condition}"'
    return None


def _fault(reader: FieldReader, fields: Fields, path: str) -> Fault | None:
    fault = reader.child_mapping(fields, "fault", path, ("delay", "abort"))
    if fault is None:
        return None
    fault_path = join_path(path, "fault")
    delay = None
    delay_fields = reader.child_mapping(
        fault,
        "delay",
        fault_path,
        ("fixedDelay", "percentage", "percent"),
        {"exponentialDelay": "no delay is injected"},
    )
    if delay_fields is not None:
        delay_path = join_path(fault_path, "delay")
        written = fault.get("delay")
        exponential = isinstance(written, dict) and written.get("exponentialDelay") is not None
        fixed = reader.duration(delay_fields, "fixedDelay", delay_path, required=not exponential)
        percent = _fault_percent(reader, delay_fields, delay_path)
        if fixed is not None:
            delay = FaultDelay(fixed_delay=fixed, percent=percent)
    abort = None
    abort_fields = reader.child_mapping(
        fault,
        "abort",
        fault_path,
        ("httpStatus", "grpcStatus", "http2Error", "percentage", "percent"),
    )
    if abort_fields is not None:
        abort_path = join_path(fault_path, "abort")
        kinds = [
            k for k in ("httpStatus", "grpcStatus", "http2Error") if abort_fields.get(k) is not None
        ]
        if len(kinds) != 1:
            reader.error(abort_path, "needs exactly one of httpStatus, grpcStatus, http2Error")
        status = reader.integer(
            abort_fields,
            "httpStatus",
            abort_path,
            minimum=HTTP_STATUS_MIN,
            maximum=HTTP_STATUS_MAX,
        )
        percent = _fault_percent(reader, abort_fields, abort_path)
        for key in ("grpcStatus", "http2Error"):
            if reader.string(abort_fields, key, abort_path) is not None:
                reader.warning(
                    join_path(abort_path, key),
                    f"{NOT_IMPLEMENTED_PREFIX}: this abort is not injected "
                    "(only httpStatus aborts are)",
                )
        if status is not None:
            abort = FaultAbort(http_status=status, percent=percent)
    if delay_fields is None and abort_fields is None:
        reader.error(fault_path, "needs delay or abort")
    return Fault(delay=delay, abort=abort)


def _fault_percent(reader: FieldReader, fields: Fields, path: str) -> float:
    """Istio's ``percentage.value`` (a double), or the older integer ``percent``; default 100."""
    if fields.get("percentage") is not None and fields.get("percent") is not None:
        reader.error(join_path(path, "percent"), "set percentage or percent, not both")
    percentage = reader.child_mapping(fields, "percentage", path, ("value",))
    if percentage is not None:
        value = reader.number(
            percentage, "value", join_path(path, "percentage"), minimum=0, maximum=100
        )
        return 100.0 if value is None else value
    percent = reader.integer(fields, "percent", path, minimum=0, maximum=100)
    return 100.0 if percent is None else float(percent)
