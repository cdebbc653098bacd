"""Merging a root route with the routes of its delegate, as Istio's mergeHTTPRoute does."""

from __future__ import annotations

import pytest
from conftest import to

from pilotfish.model.delegation import matches_conflict, merge_route
from pilotfish.model.resources import (
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    MirrorPolicy,
    Retries,
    StringMatch,
)


def uri(kind: str, value: str) -> HTTPMatchRequest:
    return HTTPMatchRequest(uri=StringMatch(kind, value))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("root", "leaf", "conflict"),
    [
        (uri("prefix", "/a"), uri("prefix", "/a/b"), False),
        (uri("prefix", "/a"), uri("exact", "/a/b"), False),
        (uri("prefix", "/a/b"), uri("prefix", "/a"), True),
        (uri("exact", "/a"), uri("exact", "/a"), False),
        (uri("exact", "/a"), uri("prefix", "/a"), True),
        (uri("regex", "/a.*"), uri("prefix", "/a"), True),
        (uri("prefix", "/a"), uri("regex", "/a.*"), True),
        (HTTPMatchRequest(port=80), HTTPMatchRequest(port=81), True),
        (HTTPMatchRequest(port=80), HTTPMatchRequest(), False),
        (HTTPMatchRequest(ignore_uri_case=True), HTTPMatchRequest(), True),
        (HTTPMatchRequest(source_namespace="a"), HTTPMatchRequest(source_namespace="b"), True),
        (
            HTTPMatchRequest(source_labels={"app": "x"}),
            HTTPMatchRequest(source_labels={"v": "1"}),
            False,
        ),
        (
            HTTPMatchRequest(source_labels={"app": "x"}),
            HTTPMatchRequest(source_labels={"app": "y"}),
            True,
        ),
        (HTTPMatchRequest(gateways=("mesh", "ns/gw")), HTTPMatchRequest(gateways=("mesh",)), False),
        (HTTPMatchRequest(gateways=("mesh",)), HTTPMatchRequest(gateways=("ns/gw",)), True),
    ],
)
def test_a_leaf_match_must_narrow_its_root(
    root: HTTPMatchRequest, leaf: HTTPMatchRequest, conflict: bool
) -> None:
    assert matches_conflict(root, leaf) is conflict


def test_merged_route_takes_conditions_of_both_and_unset_settings_from_the_root() -> None:
    root = HTTPRoute(
        name="api",
        match=(
            HTTPMatchRequest(
                uri=StringMatch("prefix", "/api"), headers={"x-a": StringMatch("exact", "1")}
            ),
            HTTPMatchRequest(uri=StringMatch("prefix", "/other")),
        ),
        timeout=3.0,
        retries=Retries(attempts=1),
        mirrors=(MirrorPolicy(Destination("shadow")),),
    )
    sub = HTTPRoute(
        name="v2",
        match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api/v2"), gateways=("edge",)),),
        route=(to("backend"),),
        timeout=1.0,
    )

    merged = merge_route(root, "default", sub, "team")

    assert merged is not None
    # /other does not contain /api/v2: only the /api root match merges.
    assert merged.match == (
        HTTPMatchRequest(
            uri=StringMatch("prefix", "/api/v2"),
            headers={"x-a": StringMatch("exact", "1")},
            gateways=("team/edge",),
        ),
    )
    assert merged.name == "api-v2"
    assert merged.timeout == 1.0
    assert merged.retries == Retries(attempts=1)
    assert merged.mirrors == root.mirrors
    # The delegate's short names mean its own namespace.
    assert merged.route[0].destination.host == "backend.team.svc.cluster.local"


def test_a_leaf_outside_every_root_match_is_dropped() -> None:
    root = HTTPRoute(match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api")),))
    sub = HTTPRoute(match=(HTTPMatchRequest(uri=StringMatch("prefix", "/web")),), route=(to("x"),))

    assert merge_route(root, "default", sub, "default") is None
