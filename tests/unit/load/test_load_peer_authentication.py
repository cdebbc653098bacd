"""PeerAuthentication: parsed values and Istio's validation rules, with file:line."""

from __future__ import annotations

import pytest
from load_cases import assert_at, find, load

PA = """\
apiVersion: security.istio.io/{version}
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {namespace}
spec:
{spec}
"""


def policy(spec: str, name: str = "p", namespace: str = "default", version: str = "v1") -> str:
    indented = "\n".join("  " + line for line in spec.strip("\n").split("\n"))
    return PA.format(version=version, name=name, namespace=namespace, spec=indented)


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_parsed_values(version: str) -> None:
    _text, result = load(
        policy(
            """selector:
  matchLabels: {app: reviews}
mtls: {mode: STRICT}
portLevelMtls:
  8080: {mode: DISABLE}
  "9090": {mode: PERMISSIVE}
  9091: {}""",
            version=version,
        )
    )
    assert result.diagnostics == ()
    assert result.config is not None
    (parsed,) = result.config.peer_authentications
    assert parsed.mode == "STRICT"
    assert parsed.selector == {"app": "reviews"}
    assert parsed.port_mtls == {8080: "DISABLE", 9090: "PERMISSIVE", 9091: "UNSET"}


def test_no_mtls_is_unset() -> None:
    _text, result = load(policy("{}"))
    assert result.config is not None
    assert result.config.peer_authentications[0].mode == "UNSET"


def test_unknown_mode_is_an_error_at_its_line() -> None:
    text, result = load(policy("mtls: {mode: STRICTLY}"))
    assert_at(result, text, "spec.mtls.mode", "mode", '"STRICTLY" must be one of')


def test_port_level_mtls_needs_a_selector() -> None:
    text, result = load(policy("portLevelMtls:\n  8080: {mode: STRICT}"))
    assert_at(result, text, "spec.portLevelMtls", "portLevelMtls", "needs a selector")


def test_an_empty_selector_is_a_namespace_policy_so_no_port_level_mtls() -> None:
    text, result = load(policy("selector: {matchLabels: {}}\nportLevelMtls:\n  8080: {}"))
    assert_at(result, text, "spec.portLevelMtls", "portLevelMtls", "needs a selector")


@pytest.mark.parametrize(
    ("ports", "field", "message"),
    [
        ("{0: {mode: STRICT}}", "spec.portLevelMtls.0", "range 1..65535"),
        ("{70000: {mode: STRICT}}", "spec.portLevelMtls.70000", "range 1..65535"),
        ("{http: {mode: STRICT}}", "spec.portLevelMtls.http", "expected a port number"),
        ("{8080: {mode: strict}}", "spec.portLevelMtls.8080.mode", "must be one of"),
        ("{8080: {mode: STRICT, extra: 1}}", "spec.portLevelMtls.8080.extra", "unknown field"),
        ("{}", "spec.portLevelMtls", "at least one port"),
        ("[8080]", "spec.portLevelMtls", "expected a mapping"),
    ],
)
def test_port_level_mtls_problems(ports: str, field: str, message: str) -> None:
    _text, result = load(policy(f"selector: {{matchLabels: {{app: a}}}}\nportLevelMtls: {ports}"))
    assert message in find(result, field).message
    assert result.config is None


def test_unknown_spec_and_selector_fields() -> None:
    text, result = load(policy("selector: {labels: {app: a}}\nmtls: {mode: STRICT}"))
    assert_at(result, text, "spec.selector.labels", "labels", "unknown field")


def test_second_namespace_policy_warns_naming_the_one_that_applies() -> None:
    text, result = load(
        policy("mtls: {mode: STRICT}", name="first"),
        policy("mtls: {mode: DISABLE}", name="second"),
    )
    warning = assert_at(
        result,
        text,
        "metadata.name",
        "name: second",
        "a second namespace-wide (default) PeerAuthentication is ignored: 'first' at mesh.yaml:4:3",
        severity="warning",
    )
    assert "Istio keeps the oldest" in warning.message
    assert result.config is not None


def test_second_mesh_policy_warns_and_other_namespaces_do_not_clash() -> None:
    _text, result = load(
        policy("mtls: {mode: STRICT}", name="a", namespace="istio-system"),
        policy("mtls: {mode: STRICT}", name="b", namespace="shop"),
        policy("mtls: {mode: STRICT}", name="c", namespace="istio-system"),
        policy("selector: {matchLabels: {app: x}}", name="d", namespace="shop"),
    )
    (warning,) = result.warnings
    assert "a second mesh-wide PeerAuthentication is ignored: 'a'" in warning.message


def test_selector_in_root_namespace_warns_that_it_applies_to_nothing() -> None:
    text, result = load(
        policy("selector: {matchLabels: {app: a}}", namespace="istio-system"),
    )
    assert_at(
        result, text, "spec.selector", "selector", "applies to no workload", severity="warning"
    )


def test_duplicate_names_are_errors() -> None:
    selected = "selector: {matchLabels: {app: a}}"
    text, result = load(policy(selected, name="same"), policy(selected, name="same"))
    assert_at(result, text, "metadata.name", "name: same", "duplicate", occurrence=2)


def test_a_port_no_selected_workload_declares_warns() -> None:
    workload = (
        "apiVersion: pilotfish.io/v1alpha1\nkind: Workload\nmetadata: {name: backend}\n"
        "spec: {service: backend, port: 8080, command: [app], labels: {app: backend}}\n"
    )
    text, result = load(
        workload,
        policy(
            "selector: {matchLabels: {app: backend}}\nportLevelMtls:\n  8080: {mode: DISABLE}\n"
            "  9080: {mode: DISABLE}"
        ),
    )
    warning = assert_at(
        result, text, "spec.portLevelMtls.9080", "9080", "declares port 9080", severity="warning"
    )
    assert "(they declare 8080): this setting applies to nothing" in warning.message
