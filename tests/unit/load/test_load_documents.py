"""Document-level rules: apiVersion/kind dispatch, metadata, unknown and ignored fields."""

from __future__ import annotations

import pytest
from load_cases import BOOKINFO_REGISTRY, assert_at, find, load, position_of

VS_REVIEWS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
"""


def test_a_document_that_is_not_a_mapping() -> None:
    _text, result = load("- just\n- a list\n")
    diagnostic = find(result, "")
    assert (diagnostic.line, diagnostic.col) == (1, 1)
    assert "expected a mapping" in diagnostic.message
    assert result.config is None


def test_missing_api_version_and_kind_are_reported_together() -> None:
    _text, result = load("metadata:\n  name: x\nspec: {}\n")
    assert find(result, "apiVersion").message == "required field is missing"
    assert find(result, "kind").message == "required field is missing"
    assert result.config is None


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_istio_networking_versions_are_all_accepted(version: str) -> None:
    _text, result = load(
        VS_REVIEWS.replace("networking.istio.io/v1", f"networking.istio.io/{version}"),
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()
    assert result.config is not None
    (service,) = result.config.virtual_services
    assert service.meta.namespace == "default"
    assert service.meta.source.file == "mesh.yaml"


@pytest.mark.parametrize(
    ("api_version", "kind", "field", "message"),
    [
        (
            "networking.istio.io/v1",
            "Sidecar",
            "kind",
            "networking.istio.io/v1 Sidecar is not supported yet",
        ),
        ("gateway.networking.k8s.io/v1", "HTTPRoute", "kind", "not supported yet"),
        ("networking.istio.io/v1", "VirtualServce", "kind", "unknown apiVersion/kind"),
        ("v1", "Service", "kind", "unknown apiVersion/kind v1/Service"),
        ("networking.istio.io/v2", "VirtualService", "apiVersion", "unsupported version"),
        ("pilotfish.io/v1alpha1", "Workloads", "kind", "unknown apiVersion/kind"),
    ],
)
def test_unsupported_kinds_name_what_was_asked(
    api_version: str, kind: str, field: str, message: str
) -> None:
    text, result = load(
        f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: x\nspec: {{}}\n"
    )
    assert_at(result, text, field, f"{field}:", message)


def test_metadata_name_is_required_and_namespace_defaults() -> None:
    text, result = load(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\n"
        "metadata:\n  labels: {a: b}\nspec:\n  servers: []\n"
    )
    assert_at(result, text, "metadata.name", "metadata:", "required field is missing")


def test_invalid_names_are_refused() -> None:
    text, result = load(VS_REVIEWS.replace("name: reviews", "name: Reviews_1"), *BOOKINFO_REGISTRY)
    assert_at(result, text, "metadata.name", "name: Reviews_1", "not a valid name")


def test_namespace_is_kept() -> None:
    _text, result = load(
        VS_REVIEWS.replace("name: reviews", "name: reviews\n  namespace: shop").replace(
            "host: reviews", "host: reviews.default.svc.cluster.local"
        ),
        *BOOKINFO_REGISTRY,
    )
    assert result.config is not None, result.diagnostics
    assert result.config.virtual_services[0].meta.namespace == "shop"


def test_unknown_field_is_an_error_with_a_suggestion() -> None:
    text, result = load(VS_REVIEWS.replace("destination:", "destinaton:"), *BOOKINFO_REGISTRY)
    diagnostic = assert_at(
        result, text, "spec.http[0].route[0].destinaton", "destinaton:", "unknown field"
    )
    assert 'did you mean "destination"' in diagnostic.message
    # The real field is then missing, and that is said too, at the object that lacks it.
    assert_at(result, text, "spec.http[0].route[0].destination", "destinaton:", "required")


def test_unknown_top_level_field() -> None:
    text, result = load(VS_REVIEWS + "extra: 1\n", *BOOKINFO_REGISTRY)
    assert_at(result, text, "extra", "extra:", "unknown field")


@pytest.mark.parametrize(
    ("replacement", "field", "needle"),
    [
        ("  exportTo: ['.']\n  http:", "spec.exportTo", "exportTo"),
    ],
)
def test_real_istio_fields_we_do_not_implement_are_warnings(
    replacement: str, field: str, needle: str
) -> None:
    old = "  http:\n  - route:" if replacement.endswith("route:") else "  http:"
    source = VS_REVIEWS.replace(old, replacement, 1)
    text, result = load(source, *BOOKINFO_REGISTRY)
    assert_at(result, text, field, needle, "not implemented by Pilotfish", severity="warning")
    assert result.config is not None


def test_status_from_kubectl_exports_is_a_warning() -> None:
    text, result = load(VS_REVIEWS + "status: {}\n", *BOOKINFO_REGISTRY)
    assert_at(result, text, "status", "status:", "not implemented", severity="warning")


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    text, result = load(
        VS_REVIEWS.replace("destination:", "destinaton:"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "- not a mapping\n",
        *BOOKINFO_REGISTRY,
    )
    fields = {d.field for d in result.diagnostics}
    assert {"spec.http[0].route[0].destinaton", "kind", ""} <= fields
    lines = [d.line for d in result.diagnostics]
    assert lines == sorted(lines)
    assert position_of(text, "kind: ConfigMap")[0] in lines
