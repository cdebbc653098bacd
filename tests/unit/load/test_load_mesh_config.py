"""The pilotfish.io MeshConfig kind and Workload identities: values, defaults, problems."""

from __future__ import annotations

import os

import pytest
from load_cases import assert_at, load

from pilotfish.discovery import build_view
from pilotfish.model.identity import Identity
from pilotfish.model.resources import (
    DEFAULT_ROOT_TTL_SECONDS,
    DEFAULT_WORKLOAD_TTL_SECONDS,
    MeshSettings,
)

MESH = """\
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
"""

WORKLOAD = """\
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata:
  name: web
spec:
  service: web
  port: 8080
  command: [python3, -m, http.server]
"""


def test_without_a_mesh_config_the_defaults_are_istios() -> None:
    _text, result = load(WORKLOAD)
    assert result.config is not None
    assert result.config.mesh == MeshSettings()
    assert result.config.mesh.trust_domain == "cluster.local"
    assert result.config.mesh.certificates.workload_ttl == DEFAULT_WORKLOAD_TTL_SECONDS == 86400
    (workload,) = result.config.workloads
    assert workload.service_account == "default"


def test_mesh_config_values() -> None:
    text = (
        MESH
        + "  trustDomain: example.org\n"
        + "  certificates:\n"
        + "    workloadTTL: 1h\n"
        + "    rootTTL: 8760h\n"
        + "    pluggedCA: {certChain: c.pem, privateKey: k.pem, rootCert: r.pem}\n"
    )
    _text, result = load(text)
    assert result.diagnostics == ()
    assert result.config is not None
    mesh = result.config.mesh
    assert mesh.meta is not None and mesh.meta.name == "mesh"
    assert mesh.trust_domain == "example.org"
    assert mesh.certificates.workload_ttl == 3600
    assert mesh.certificates.root_ttl == 8760 * 3600
    plugged = mesh.certificates.plugged
    assert plugged is not None
    assert os.path.isabs(plugged.cert_chain) and plugged.cert_chain.endswith("c.pem")
    assert (os.path.basename(plugged.private_key), os.path.basename(plugged.root_cert)) == (
        "k.pem",
        "r.pem",
    )


def test_unset_certificate_fields_keep_their_defaults() -> None:
    _text, result = load(MESH + "  certificates: {workloadTTL: 2m}\n")
    assert result.config is not None
    assert result.config.mesh.certificates.root_ttl == DEFAULT_ROOT_TTL_SECONDS
    assert result.config.mesh.certificates.plugged is None


@pytest.mark.parametrize(
    ("spec", "field", "needle", "message"),
    [
        ("  trustDomain: Example.COM\n", "spec.trustDomain", "trustDomain", "not a trust domain"),
        (
            "  certificates: {workloadTTL: 30s}\n",
            "spec.certificates.workloadTTL",
            "workloadTTL",
            "at least 1m",
        ),
        (
            "  certificates: {rootTTL: 1h}\n",
            "spec.certificates.rootTTL",
            "rootTTL",
            "at least 24h",
        ),
        (
            "  certificates: {workloadTTL: 48h, rootTTL: 24h}\n",
            "spec.certificates.workloadTTL",
            "workloadTTL",
            "shorter than rootTTL",
        ),
        (
            "  certificates: {pluggedCA: {certChain: c.pem, privateKey: k.pem}}\n",
            "spec.certificates.pluggedCA.rootCert",
            "pluggedCA",
            "required",
        ),
        ("  meshMTLS: {}\n", "spec.meshMTLS", "meshMTLS", "unknown field"),
    ],
)
def test_mesh_config_problems(spec: str, field: str, needle: str, message: str) -> None:
    text, result = load(MESH + spec)
    assert_at(result, text, field, needle, message)


def test_a_folder_has_at_most_one_mesh_config() -> None:
    second = MESH.replace("name: mesh", "name: other") + "  trustDomain: b.org\n"
    text, result = load(MESH + "  trustDomain: a.org\n", second)
    diagnostic = assert_at(result, text, "metadata.name", "name: other", "at most one MeshConfig")
    assert "mesh.yaml:4:" in diagnostic.message  # where the first one is


def test_workload_service_account() -> None:
    _text, result = load(WORKLOAD + "  serviceAccount: web-sa\n")
    assert result.config is not None
    (workload,) = result.config.workloads
    assert workload.service_account == "web-sa"
    identity = Identity("cluster.local", workload.meta.namespace, workload.service_account)
    assert identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/web-sa"


def test_workload_service_account_must_be_a_name() -> None:
    text, result = load(WORKLOAD + "  serviceAccount: Web_SA\n")
    assert_at(result, text, "spec.serviceAccount", "serviceAccount", "not a service account name")


@pytest.mark.parametrize(
    "spiffe_id",
    ["spiffe://a/ns/b/sa/c", "spiffe://cluster.local/ns/default/sa/default"],
)
def test_identities_round_trip(spiffe_id: str) -> None:
    assert Identity.parse(spiffe_id).spiffe_id == spiffe_id


@pytest.mark.parametrize(
    "text", ["http://a/ns/b/sa/c", "spiffe://a/ns/b", "spiffe://a/sa/b/ns/c", "spiffe://a/ns//sa/c"]
)
def test_what_is_not_an_identity(text: str) -> None:
    with pytest.raises(ValueError, match=r"SPIFFE|form"):
        Identity.parse(text)


ENTRIES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: with-sidecar}
spec:
  address: 127.0.0.2
  labels: {app: legacy, security.istio.io/tlsMode: istio}
  serviceAccount: legacy-sa
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sidecar-default-account}
spec:
  address: 127.0.0.3
  labels: {app: legacy, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: without-sidecar}
spec:
  address: 127.0.0.4
  labels: {app: legacy}
  serviceAccount: legacy-sa
"""


def test_workload_entries_with_a_sidecar_carry_their_identity_to_their_endpoints() -> None:
    _text, result = load(ENTRIES)
    assert result.diagnostics == ()
    assert result.config is not None
    view = build_view(result.config)
    accounts = {e.address: e.service_account for e in view.endpoints_of("legacy.example.internal")}
    # Istio's rule: only the tlsMode label says a sidecar is there (and so mTLS is spoken).
    assert accounts == {"127.0.0.2": "legacy-sa", "127.0.0.3": "default", "127.0.0.4": None}


def test_a_workload_entry_service_account_must_be_a_name() -> None:
    text, result = load(ENTRIES.replace("serviceAccount: legacy-sa", "serviceAccount: Bad SA", 1))
    assert_at(result, text, "spec.serviceAccount", "serviceAccount", "not a service account")
