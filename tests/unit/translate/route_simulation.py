"""Push a synthetic HTTP request through a RouteConfiguration and see where it lands.

Istio's ``pilot/pkg/simulation`` idea in miniature: tests and debugging tools can ask "which
cluster does ``GET http://reviews:9080/x`` reach?" instead of reading protobuf. It follows
Envoy's documented matching order but implements only the matchers translation emits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import re2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

_REDIRECT_STATUS: Mapping[int, int] = {
    rc.RedirectAction.MOVED_PERMANENTLY: 301,
    rc.RedirectAction.FOUND: 302,
    rc.RedirectAction.SEE_OTHER: 303,
    rc.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc.RedirectAction.PERMANENT_REDIRECT: 308,
}


@dataclass(frozen=True)
class SimulatedRequest:
    """``path`` may carry a query string; header names are matched case-insensitively."""

    host: str
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "http"


@dataclass(frozen=True)
class SimulatedOutcome:
    """Where the request went: weighted ``clusters``, or a local ``status`` (and ``body``)."""

    virtual_host: str | None
    route_name: str | None = None
    clusters: tuple[tuple[str, int], ...] = ()
    status: int | None = None
    body: str = ""
    # Clusters that get a copy, with the share of requests copied (percent).
    mirrors: tuple[tuple[str, float], ...] = ()

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.clusters)


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """Envoy's order: exact, then longest suffix wildcard, then longest prefix wildcard, then *."""
    domain, host = domain.lower(), host.lower()
    if domain == host:
        return (0, 0)
    if domain == "*":
        return (3, 0)
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return (1, -len(domain))
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return (2, -len(domain))
    return None


def select_virtual_host(config: route_pb2.RouteConfiguration, host: str) -> rc.VirtualHost | None:
    ranked = [
        (rank, index, vhost)
        for index, vhost in enumerate(config.virtual_hosts)
        for domain in vhost.domains
        if (rank := _domain_rank(domain, host)) is not None
    ]
    if not ranked:
        return None
    return min(ranked, key=lambda item: (item[0], item[1]))[2]


def string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    if matcher.ignore_case:
        raise NotImplementedError("ignore_case string matchers are not simulated")
    kind = matcher.WhichOneof("match_pattern")
    if kind == "exact":
        return bool(value == matcher.exact)
    if kind == "prefix":
        return value.startswith(matcher.prefix)
    if kind == "suffix":
        return value.endswith(matcher.suffix)
    if kind == "contains":
        return matcher.contains in value
    if kind == "safe_regex":
        return re2.fullmatch(matcher.safe_regex.regex, value) is not None
    raise NotImplementedError(f"string matcher {kind} is not simulated")


def _header_value(request: SimulatedRequest, name: str) -> str | None:
    pseudo = {
        ":method": request.method,
        ":authority": request.host,
        ":path": request.path,
        ":scheme": request.scheme,
    }
    if name in pseudo:
        return pseudo[name]
    lowered = {key.lower(): value for key, value in request.headers.items()}
    return lowered.get(name.lower())


def _header_matches(header: rc.HeaderMatcher, request: SimulatedRequest) -> bool:
    """Envoy's HeaderMatcher: ``invert_match`` negates; a missing header fails the match
    unless ``treat_missing_header_as_empty`` matches "" instead (then negation applies)."""
    value = _header_value(request, header.name)
    kind = header.WhichOneof("header_match_specifier")
    if kind == "present_match":
        return (value is not None) != header.invert_match
    if kind != "string_match":
        raise NotImplementedError(f"header matcher {kind} is not simulated")
    if value is None:
        if not header.treat_missing_header_as_empty:
            return False
        value = ""
    return string_matches(header.string_match, value) != header.invert_match


def route_matches(match: rc.RouteMatch, request: SimulatedRequest) -> bool:
    split = urlsplit(request.path)
    path = split.path
    kind = match.WhichOneof("path_specifier")
    # Envoy: only a connect_matcher matches an HTTP/1.1 CONNECT (it has no path), and it
    # matches nothing else.
    if (kind == "connect_matcher") != (request.method == "CONNECT"):
        return False
    # case_sensitive applies to prefix and path; Envoy's safe_regex ignores it.
    folded = match.HasField("case_sensitive") and not match.case_sensitive.value
    compared = path.lower() if folded else path
    if kind == "prefix" and not compared.startswith(
        match.prefix.lower() if folded else match.prefix
    ):
        return False
    if kind == "path" and compared != (match.path.lower() if folded else match.path):
        return False
    if kind == "safe_regex" and re2.fullmatch(match.safe_regex.regex, path) is None:
        return False
    for header in match.headers:
        if not _header_matches(header, request):
            return False
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    for parameter in match.query_parameters:
        value = query.get(parameter.name)
        if value is None or not string_matches(parameter.string_match, value):
            return False
    return True


def _outcome(vhost: rc.VirtualHost, route: rc.Route) -> SimulatedOutcome:
    name = route.name or None
    action = route.WhichOneof("action")
    if action == "route":
        if route.route.WhichOneof("cluster_specifier") == "weighted_clusters":
            weighted = route.route.weighted_clusters.clusters
            clusters = tuple((c.name, c.weight.value) for c in weighted)
        else:
            clusters = ((route.route.cluster, 100),)
        mirrors = tuple(
            (policy.cluster, _percent(policy.runtime_fraction.default_value))
            for policy in route.route.request_mirror_policies
        )
        return SimulatedOutcome(vhost.name, name, clusters=clusters, mirrors=mirrors)
    if action == "direct_response":
        response = route.direct_response
        body = response.body.inline_string or response.body_format.text_format_source.inline_string
        return SimulatedOutcome(vhost.name, name, status=response.status, body=body)
    if action == "redirect":
        return SimulatedOutcome(
            vhost.name, name, status=_REDIRECT_STATUS[route.redirect.response_code]
        )
    raise NotImplementedError(f"route action {action} is not simulated")


def _percent(fraction: percent_pb2.FractionalPercent) -> float:
    per = {
        percent_pb2.FractionalPercent.HUNDRED: 100,
        percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
        percent_pb2.FractionalPercent.MILLION: 1_000_000,
    }[fraction.denominator]
    return fraction.numerator * 100 / per


def simulate_request(
    config: route_pb2.RouteConfiguration, request: SimulatedRequest
) -> SimulatedOutcome:
    """The first matching route of the selected virtual host wins; no match is Envoy's 404."""
    vhost = select_virtual_host(config, request.host)
    if vhost is None:
        return SimulatedOutcome(None, status=404)
    for route in vhost.routes:
        if route_matches(route.match, request):
            return _outcome(vhost, route)
    return SimulatedOutcome(vhost.name, status=404)
