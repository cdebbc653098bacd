"""Delegate VirtualServices: a root route's traffic handed to the routes of another resource.

Istio's rules (``mergeVirtualServicesIfNeeded``): a delegate is a VirtualService without
hosts; each of its routes takes the root route's place, its matches narrowed by the root's
matches, and any action setting it leaves unset inherited from the root route. A delegate
match that contradicts every root match drops that delegate route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from pilotfish.model.resources import (
    Delegate,
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    MirrorPolicy,
    RouteDestination,
    StringMatch,
    VirtualService,
    qualify_host,
)

MESH = "mesh"


def qualify_gateway(gateway: str, namespace: str) -> str:
    """``gw`` written in namespace ``ns`` is ``ns/gw``; "mesh" stays itself."""
    if gateway == MESH or "/" in gateway:
        return gateway
    return f"{namespace}/{gateway}"


def delegate_key(delegate: Delegate, root_namespace: str) -> tuple[str, str]:
    return (delegate.namespace or root_namespace, delegate.name)


def virtual_services_by_name(
    services: Iterable[VirtualService],
) -> dict[tuple[str, str], VirtualService]:
    found: dict[tuple[str, str], VirtualService] = {}
    for service in services:
        found.setdefault((service.meta.namespace, service.meta.name), service)
    return found


def expand_delegates(
    root: VirtualService, by_name: Mapping[tuple[str, str], VirtualService]
) -> tuple[HTTPRoute, ...]:
    """The root's routes with every usable delegate inserted in place.

    A missing or unusable delegate (one with hosts, or delegating again) contributes no
    routes; validation reports it as an error, so this only matters for config that was
    never validated.
    """
    routes: list[HTTPRoute] = []
    for http in root.http:
        if http.delegate is None:
            routes.append(http)
            continue
        target = by_name.get(delegate_key(http.delegate, root.meta.namespace))
        if target is None or not target.is_delegate:
            continue
        for sub in target.http:
            if sub.delegate is not None:
                continue
            merged = merge_route(http, root.meta.namespace, sub, target.meta.namespace)
            if merged is not None:
                routes.append(merged)
    return tuple(routes)


def merge_route(
    root: HTTPRoute, root_namespace: str, sub: HTTPRoute, sub_namespace: str
) -> HTTPRoute | None:
    """``sub`` narrowed by ``root``'s matches, or None when no root match admits it.

    Names in each are qualified in its own namespace first, so that they compare and so
    that the merged route means what each resource's author meant.
    """
    local = _qualified(sub, sub_namespace)
    matches = merge_matches(_qualified_matches(root.match, root_namespace), local.match)
    if matches is None:
        return None
    return replace(
        local,
        match=matches,
        name=_joined_name(root.name, sub.name),
        rewrite=local.rewrite or root.rewrite,
        direct_response=local.direct_response or root.direct_response,
        timeout=local.timeout if local.timeout is not None else root.timeout,
        retries=local.retries or root.retries,
        fault=local.fault or root.fault,
        mirrors=local.mirrors or root.mirrors,
        cors_policy=local.cors_policy or root.cors_policy,
        headers=local.headers or root.headers,
        delegate=None,
    )


def _joined_name(root: str | None, sub: str | None) -> str | None:
    if not sub:
        return root
    return f"{root}-{sub}" if root else sub


def _qualified(route: HTTPRoute, namespace: str) -> HTTPRoute:
    """Short names in a delegate mean its own namespace, wherever its routes end up."""

    def destination(d: Destination) -> Destination:
        return replace(d, host=qualify_host(d.host, namespace))

    return replace(
        route,
        route=tuple(
            RouteDestination(destination(r.destination), r.weight, r.headers) for r in route.route
        ),
        mirrors=tuple(MirrorPolicy(destination(m.destination), m.percent) for m in route.mirrors),
        match=_qualified_matches(route.match, namespace),
    )


def _qualified_matches(
    matches: tuple[HTTPMatchRequest, ...], namespace: str
) -> tuple[HTTPMatchRequest, ...]:
    return tuple(
        replace(m, gateways=tuple(qualify_gateway(g, namespace) for g in m.gateways))
        for m in matches
    )


def merge_matches(
    root: tuple[HTTPMatchRequest, ...], sub: tuple[HTTPMatchRequest, ...]
) -> tuple[HTTPMatchRequest, ...] | None:
    """Every (root, sub) pair that can both hold, merged; None if some sub match fits none."""
    if not root:
        return sub
    if not sub:
        return root
    merged: list[HTTPMatchRequest] = []
    for leaf in sub:
        fitting = [
            _merge_match(parent, leaf) for parent in root if not matches_conflict(parent, leaf)
        ]
        if not fitting:
            return None
        merged.extend(fitting)
    return tuple(merged)


def _merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    return replace(
        leaf,
        name=_joined_name(root.name, leaf.name),
        uri=leaf.uri or root.uri,
        scheme=leaf.scheme or root.scheme,
        method=leaf.method or root.method,
        authority=leaf.authority or root.authority,
        headers={**root.headers, **leaf.headers},
        without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params},
        port=leaf.port if leaf.port is not None else root.port,
        source_labels={**root.source_labels, **leaf.source_labels},
        source_namespace=leaf.source_namespace or root.source_namespace,
        gateways=leaf.gateways or root.gateways,
    )


def matches_conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    """Whether ``leaf`` asks for something ``root`` excludes (Istio's ``hasConflict``)."""
    pairs = [
        (root.uri, leaf.uri),
        (root.scheme, leaf.scheme),
        (root.method, leaf.method),
        (root.authority, leaf.authority),
    ]
    pairs += [(root.headers.get(k), v) for k, v in leaf.headers.items()]
    pairs += [(root.without_headers.get(k), v) for k, v in leaf.without_headers.items()]
    pairs += [(root.query_params.get(k), v) for k, v in leaf.query_params.items()]
    if any(_string_conflict(parent, child) for parent, child in pairs):
        return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port is not None and leaf.port is not None and root.port != leaf.port:
        return True
    if root.source_namespace is not None and leaf.source_namespace != root.source_namespace:
        return True
    if any(
        k in root.source_labels and root.source_labels[k] != v
        for k, v in leaf.source_labels.items()
    ):
        return True
    return bool(root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways))


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """A leaf condition must be a narrowing of the root's: a regex never is, nor is one
    exact value against another; a prefix or exact value must lie inside the root prefix."""
    if root is None or leaf is None:
        return False
    if root.kind == "regex" or leaf.kind == "regex":
        return True
    if root.kind == "exact":
        return leaf.kind != "exact" or leaf.value != root.value
    return not leaf.value.startswith(root.value)
