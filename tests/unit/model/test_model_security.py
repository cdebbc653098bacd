"""Istio's composition of PeerAuthentication scopes into one mode per workload port."""

from __future__ import annotations

import pytest

from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.resources import Meta
from pilotfish.model.security import (
    EffectiveMtlsMode,
    MtlsMode,
    PeerAuthentication,
    applicable_peer_authentications,
    effective_mtls_mode,
)

APP = {"app": "reviews", "version": "v1"}
PORT = 8080


def pa(
    name: str,
    mode: MtlsMode,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: dict[int, MtlsMode] | None = None,
) -> PeerAuthentication:
    meta = Meta("PeerAuthentication", name, namespace, SourceMap(f"{name}.yaml"))
    return PeerAuthentication(meta, mode, selector or {}, ports or {})


def mesh(mode: MtlsMode) -> PeerAuthentication:
    return pa("mesh", mode, namespace="istio-system")


def namespace(mode: MtlsMode) -> PeerAuthentication:
    return pa("ns", mode)


def workload(mode: MtlsMode, ports: dict[int, MtlsMode] | None = None) -> PeerAuthentication:
    return pa("wl", mode, selector={"app": "reviews"}, ports=ports)


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ((), "PERMISSIVE"),
        ((mesh("UNSET"),), "PERMISSIVE"),
        ((mesh("STRICT"),), "STRICT"),
        ((mesh("DISABLE"),), "DISABLE"),
        ((mesh("STRICT"), namespace("PERMISSIVE")), "PERMISSIVE"),
        ((mesh("STRICT"), namespace("UNSET")), "STRICT"),
        ((namespace("UNSET"),), "PERMISSIVE"),
        ((mesh("DISABLE"), namespace("STRICT"), workload("PERMISSIVE")), "PERMISSIVE"),
        ((mesh("DISABLE"), namespace("STRICT"), workload("UNSET")), "STRICT"),
        ((mesh("STRICT"), workload("UNSET")), "STRICT"),
        ((mesh("STRICT"), workload("DISABLE")), "DISABLE"),
        ((workload("STRICT", {PORT: "DISABLE"}),), "DISABLE"),
        ((workload("STRICT", {PORT: "UNSET"}),), "STRICT"),
        ((namespace("STRICT"), workload("UNSET", {PORT: "UNSET"})), "STRICT"),
        ((namespace("STRICT"), workload("DISABLE", {9999: "STRICT"})), "DISABLE"),
        ((mesh("DISABLE"), workload("UNSET", {PORT: "STRICT"})), "STRICT"),
    ],
)
def test_scopes_compose_as_in_istio(
    policies: tuple[PeerAuthentication, ...], expected: EffectiveMtlsMode
) -> None:
    assert effective_mtls_mode(policies, "default", APP, PORT) == expected
    # The order in which scopes are written does not matter, only which scope each is.
    assert effective_mtls_mode(tuple(reversed(policies)), "default", APP, PORT) == expected


def test_other_namespaces_and_unselected_workloads_do_not_count() -> None:
    policies = (
        pa("elsewhere", "STRICT", namespace="shop"),
        pa("other-app", "STRICT", selector={"app": "ratings"}),
        pa("same-labels-other-ns", "STRICT", namespace="shop", selector={"app": "reviews"}),
    )
    assert effective_mtls_mode(policies, "default", APP, PORT) == "PERMISSIVE"


def test_a_selector_in_the_root_namespace_is_ignored() -> None:
    policies = (pa("root-selector", "STRICT", namespace="istio-system", selector={"app": "x"}),)
    assert effective_mtls_mode(policies, "istio-system", {"app": "x"}, PORT) == "PERMISSIVE"


def test_the_first_of_a_scope_wins() -> None:
    first, second = pa("first", "STRICT"), pa("second", "DISABLE")
    chosen = applicable_peer_authentications((first, second), "default", APP)
    assert chosen.namespace is first
    first_wl = pa("w1", "DISABLE", selector={"app": "reviews"})
    second_wl = pa("w2", "STRICT", selector={"version": "v1"})
    chosen = applicable_peer_authentications((second_wl, first_wl), "default", APP)
    assert chosen.workload is second_wl
    assert chosen.mode_for_port(PORT) == "STRICT"


def test_without_a_port_the_workload_mode_applies() -> None:
    policies = (workload("STRICT", {PORT: "DISABLE"}),)
    assert effective_mtls_mode(policies, "default", APP, None) == "STRICT"
