"""Localities and ``localityLbSetting``: parsed values, and Istio's checks with file:line."""

from __future__ import annotations

import textwrap

import pytest
from load_cases import BOOKINFO_REGISTRY, assert_at, errors, load

from pilotfish.load import LoadResult
from pilotfish.model.resilience import LocalityDistribution, LocalityFailover, LocalityLbSetting

SETTING = "spec.trafficPolicy.loadBalancer.localityLbSetting"


def rule(setting: str, *, outlier: bool = True) -> str:
    """A DestinationRule for reviews whose localityLbSetting is ``setting`` (YAML, 8 spaces)."""
    body = textwrap.indent(textwrap.dedent(setting).strip("\n"), " " * 8)
    detection = "    outlierDetection: {consecutive5xxErrors: 1}\n" if outlier else ""
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata: {name: reviews}\n"
        "spec:\n"
        "  host: reviews\n"
        "  trafficPolicy:\n"
        f"{detection}"
        "    loadBalancer:\n"
        "      localityLbSetting:\n"
        f"{body}\n"
    )


def load_setting(setting: str, *, outlier: bool = True) -> tuple[str, LoadResult]:
    return load(rule(setting, outlier=outlier), *BOOKINFO_REGISTRY)


def parsed(result: LoadResult) -> LocalityLbSetting | None:
    assert result.config is not None, result.diagnostics
    policy = result.config.destination_rules[0].traffic_policy
    assert policy is not None and policy.load_balancer is not None
    return policy.load_balancer.locality_lb_setting


def test_distribute_is_parsed() -> None:
    _text, result = load_setting(
        """
        distribute:
        - from: us-east/zone-a/*
          to: {"us-east/zone-a/*": 80, "us-east/zone-b/*": 20}
        """
    )
    assert errors(result) == []
    assert parsed(result) == LocalityLbSetting(
        distribute=(
            LocalityDistribution(
                "us-east/zone-a/*", {"us-east/zone-a/*": 80, "us-east/zone-b/*": 20}
            ),
        )
    )


def test_failover_and_priority_are_parsed() -> None:
    _text, result = load_setting(
        """
        enabled: true
        failover: [{from: us-east, to: eu-west}]
        failoverPriority: [topology.istio.io/network, "version=v2"]
        """
    )
    assert errors(result) == []
    assert parsed(result) == LocalityLbSetting(
        failover=(LocalityFailover("us-east", "eu-west"),),
        failover_priority=("topology.istio.io/network", "version=v2"),
        enabled=True,
    )


@pytest.mark.parametrize(
    ("setting", "field", "needle", "message"),
    [
        (
            "distribute: [{from: a/b, to: {a/b: 80, a/c: 25}}]",
            "distribute[0].to",
            "to:",
            "add up to 105, not 100",
        ),
        (
            "distribute: [{from: a/b, to: {a/b: 80, a/c: 15}}]",
            "distribute[0].to",
            "to:",
            "add up to 95",
        ),
        (
            "distribute: [{from: a/b, to: {a/b: 0, a/c: 100}}]",
            "distribute[0].to.a/b",
            "a/b: 0",
            "out of range (1 to 100)",
        ),
        (
            "distribute: [{from: a/b, to: {a/b: 101}}]",
            "distribute[0].to.a/b",
            "a/b: 101",
            "out of range",
        ),
        ("distribute: [{from: a/b, to: {}}]", "distribute[0].to", "to:", "add up to 0"),
        ("distribute: [{to: {a: 100}}]", "distribute[0].from", "{to:", "required"),
        ("distribute: [{from: a, to: {a//c: 100}}]", "distribute[0].to.a//c", "a//c", "empty"),
        ("distribute: [{from: a/*/c, to: {a: 100}}]", "distribute[0].from", "from", "at its end"),
        ("distribute: [{from: a/**, to: {a: 100}}]", "distribute[0].from", "from", "one wildcard"),
        (
            "distribute: [{from: a, to: {a: 50, a/b: 50}}]",
            "distribute[0].to.a/b",
            "a/b: 50",
            "overlaps",
        ),
        (
            "distribute: [{from: '*', to: {a: 100}}, {from: b, to: {b: 100}}]",
            "distribute[1].from",
            "from: b",
            "overlaps",
        ),
        ("failover: [{from: us-east, to: us-east}]", "failover[0].to", "to: us-east", "to itself"),
        ("failover: [{from: us-east/a, to: b}]", "failover[0].from", "from", "region only"),
        ("failover: [{from: a, to: b/c}]", "failover[0].to", "to", "region only"),
        ("failover: [{from: '*', to: b}]", "failover[0].from", "from", "wildcard"),
        ("failover: [{from: a}]", "failover[0].to", "{from: a}", "required"),
        ("failover: [{from: '', to: b}]", "failover[0].from", "from", "must not be empty"),
        (
            "failover: [{from: a, to: b}]\nfailoverPriority: [topology.kubernetes.io/zone]",
            "failoverPriority[0]",
            "topology.kubernetes.io/zone",
            "refuses them together",
        ),
        ("enabled: yes please", "enabled", "enabled", "true or false"),
        ("weights: {a: 1}", "weights", "weights", "unknown field"),
    ],
)
def test_istios_checks(setting: str, field: str, needle: str, message: str) -> None:
    text, result = load_setting(setting)
    assert_at(result, text, f"{SETTING}.{field}", needle, message)


def test_distribute_and_failover_together_are_refused() -> None:
    text, result = load_setting(
        """
        distribute: [{from: a, to: {a: 100}}]
        failover: [{from: a, to: b}]
        """
    )
    assert_at(result, text, SETTING, "localityLbSetting", "not both")


def test_failover_without_outlier_detection_warns_what_happens() -> None:
    text, result = load_setting("failover: [{from: a, to: b}]", outlier=False)
    warning = assert_at(
        result, text, SETTING, "localityLbSetting", "needs outlierDetection", severity="warning"
    )
    assert "every locality share the traffic" in warning.message
    assert result.config is not None  # a warning, as in Istio


def test_the_network_label_in_failover_priority_warns_what_will_not_happen() -> None:
    text, result = load_setting('failoverPriority: [topology.istio.io/network, "version=v2"]')
    warning = assert_at(
        result,
        text,
        f"{SETTING}.failoverPriority[0]",
        "topology.istio.io/network",
        "Pilotfish has no networks",
        severity="warning",
    )
    assert "not ranked by the labels after it" in warning.message
    assert errors(result) == []


def test_distribute_needs_no_outlier_detection() -> None:
    _text, result = load_setting("distribute: [{from: a, to: {a: 100}}]", outlier=False)
    assert errors(result) == []
    assert [d for d in result.diagnostics if d.field.startswith(SETTING)] == []


def test_mesh_config_default_is_parsed_without_the_outlier_warning() -> None:
    text, result = load(
        """\
        apiVersion: pilotfish.io/v1alpha1
        kind: MeshConfig
        metadata: {name: mesh}
        spec:
          localityLbSetting:
            failover: [{from: us-east, to: us-east}, {from: us-west, to: us-east}]
        """
    )
    assert_at(result, text, "spec.localityLbSetting.failover[0].to", "to: us-east", "to itself")
    assert len(result.diagnostics) == 1
    _text, result = load(text.replace("to: us-east}, {", "to: eu-west}, {"))
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.mesh.locality_lb_setting == LocalityLbSetting(
        failover=(LocalityFailover("us-east", "eu-west"), LocalityFailover("us-west", "us-east"))
    )


WORKLOAD = """\
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, port: 8080, command: [app], locality: LOCALITY}
"""
ENTRY = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm}
spec: {address: 10.0.0.1, locality: LOCALITY}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2, locality: LOCALITY}]
"""


def test_endpoint_localities_are_parsed() -> None:
    _text, result = load(WORKLOAD.replace("LOCALITY", "us-east/zone-a/rack-1"))
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.workloads[0].locality == "us-east/zone-a/rack-1"
    _text, result = load(ENTRY.replace("LOCALITY", "eu-west"))
    assert errors(result) == []
    assert result.config is not None
    assert result.config.workload_entries[0].spec.locality == "eu-west"
    assert result.config.service_entries[0].endpoints[0].locality == "eu-west"


@pytest.mark.parametrize(
    ("locality", "message"),
    [
        ("a//c", "empty region, zone or subzone"),
        ("a/b/c/d", "more parts than region/zone/subzone"),
        ("a/*", "wildcard"),
        ("'a /b'", "spaces"),
    ],
)
def test_bad_endpoint_localities(locality: str, message: str) -> None:
    text, result = load(WORKLOAD.replace("LOCALITY", locality))
    assert_at(result, text, "spec.locality", "locality", message)
    text, result = load(ENTRY.replace("LOCALITY", locality))
    assert_at(result, text, "spec.locality", "locality", message)
    assert_at(result, text, "spec.endpoints[0].locality", "locality", message, occurrence=2)


def dns_entry(*, resolution: str = "DNS", localities: bool = True) -> str:
    where = ", locality: r1/z1" if localities else ""
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        "metadata: {name: ext}\n"
        "spec:\n"
        "  hosts: [ext.example]\n"
        f"  resolution: {resolution}\n"
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n"
        "  endpoints:\n"
        f"  - {{address: 10.0.0.1{where}}}\n"
    )


def dns_rule(policy: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata: {name: ext}\n"
        "spec:\n"
        "  host: ext.example\n"
        f"  trafficPolicy: {policy}\n"
    )


DETECTION = "{outlierDetection: {consecutive5xxErrors: 1}}"
DISTRIBUTE = "{loadBalancer: {localityLbSetting: {distribute: [{from: r1/*, to: {r1/*: 100}}]}}}"


@pytest.mark.parametrize(
    ("entry", "policy", "source"),
    [
        (dns_entry(), DETECTION, "the mesh's localityLbSetting, on by default"),
        (dns_entry(localities=False), DISTRIBUTE, "the localityLbSetting of DestinationRule"),
    ],
)
def test_a_dns_service_entry_warns_that_locality_lb_is_not_applied(
    entry: str, policy: str, source: str
) -> None:
    text, result = load(entry, dns_rule(policy))
    warning = assert_at(
        result, text, "spec.resolution", "resolution: DNS", "is not applied", severity="warning"
    )
    assert source in warning.message
    assert "every endpoint has priority 0" in warning.message


@pytest.mark.parametrize(
    ("entry", "policy"),
    [
        (dns_entry(resolution="STATIC"), DETECTION),  # EDS: applied
        (dns_entry(localities=False), DETECTION),  # the default failover has nothing to do
        (dns_entry(), "{loadBalancer: {simple: ROUND_ROBIN}}"),  # no outlier detection
    ],
)
def test_no_dns_warning_where_locality_lb_would_change_nothing(entry: str, policy: str) -> None:
    _text, result = load(entry, dns_rule(policy))
    assert [d for d in result.diagnostics if "resolution DNS" in d.message] == []
