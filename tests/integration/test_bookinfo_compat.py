"""Istio's own Bookinfo samples, unmodified, go through load, translation and Envoy's own
config validation. Read from ../shared/compat (kept outside the repository on purpose)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.test_translate_envoy_validate import envoy_validate, static_bootstrap

from pilotfish.controller.control_plane import load_and_check
from pilotfish.discovery import build_view
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import Endpoint
from pilotfish.runner.local_mesh import GATEWAY_LABELS
from pilotfish.translate import MeshTranslator

BOOKINFO = Path(__file__).resolve().parents[3] / "shared" / "compat" / "istio-bookinfo"
SCENARIOS = [
    "bookinfo-gateway.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
]
SERVICES = {  # service -> versions, as the SOURCE.md of the samples describes
    "productpage": ["v1"],
    "details": ["v1"],
    "reviews": ["v1", "v2", "v3"],
    "ratings": ["v1"],
}


@pytest.fixture
def bookinfo() -> Path:
    """The samples folder, or a skip that names it: a clone of its own has no ../shared."""
    if not BOOKINFO.is_dir():
        pytest.skip(
            f"Istio's Bookinfo samples are missing: no folder {BOOKINFO} "
            "(kept outside the repository: copy Istio's samples/bookinfo/networking there)"
        )
    return BOOKINFO


def registry() -> str:
    return "".join(
        f"""---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: {service}-{version}}}
spec:
  service: {service}
  port: 9080
  labels: {{app: {service}, version: {version}}}
  command: [python3, app.py]
"""
        for service, versions in SERVICES.items()
        for version in versions
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_is_accepted_and_envoy_validates_its_config(
    scenario: str, tmp_path: Path, bookinfo: Path
) -> None:
    folder = tmp_path / "bookinfo"
    folder.mkdir()
    for name in (scenario, "destination-rule-all.yaml"):
        (folder / name).write_text((bookinfo / name).read_text())
    (folder / "registry.yaml").write_text(registry())

    result = load_and_check(folder)
    assert result.config is not None, [str(d) for d in result.diagnostics]
    assert [d for d in result.diagnostics if d.severity == "error"] == []

    runtime = {
        f"{service}.default.svc.cluster.local": [
            Endpoint("127.0.0.1", {9080: 20000 + index}, {"app": service, "version": version})
            for index, version in enumerate(versions)
        ]
        for service, versions in SERVICES.items()
    }
    translator = MeshTranslator(build_view(result.config, runtime))
    proxies = [
        ProxyNode(
            id="reviews-v1-0", service="reviews", outbound_port=1, inbound_port=2, app_port=3
        ),
        ProxyNode(id="ingressgateway", kind="gateway", labels=GATEWAY_LABELS),
    ]
    for proxy in proxies:
        checked = envoy_validate(static_bootstrap(translator.resources_for(proxy)), tmp_path)
        assert checked.returncode == 0, checked.stdout[-3000:]


# Istio-valid config that Pilotfish once refused, each piece found by running Istio's own
# samples and validation cases through the loader (tools/istio_corpus.py).
ISTIO_VALID = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: true}}
    outlierDetection: {consecutive5xxErrors: 5, minHealthPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - name: any
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {x-canary: {}}
    route:
    - destination: {host: reviews, subset: any}
    headers:
      request:
        set: {":authority": reviews.internal, x-quota: "100%%"}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 49
    - destination: {host: reviews, subset: v2}
      weight: 50
    retries: {attempts: 2, retryOn: "http3-post-connect-failure,5xx"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports:
  - {number: 80, name: http}
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 53, name: dns, protocol: UDP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anywhere}
spec:
  hosts: [anywhere.example.com]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
"""


def test_istio_valid_config_is_accepted_with_warnings_and_envoy_validates_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mesh"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(ISTIO_VALID)
    (folder / "registry.yaml").write_text(registry())

    result = load_and_check(folder)
    assert result.config is not None, [str(d) for d in result.diagnostics]
    warned = sorted(d.field for d in result.diagnostics)
    assert warned == [
        "spec.http[1].route",  # 49 + 50: split in proportion
        "spec.ports[2]",  # UDP is not carried (HTTPS is, as TLS; so is the passthrough server)
    ]
    assert all(d.severity == "warning" for d in result.diagnostics)

    runtime = {
        "reviews.default.svc.cluster.local": [
            Endpoint("127.0.0.1", {9080: 20000 + index}, {"app": "reviews", "version": version})
            for index, version in enumerate(SERVICES["reviews"])
        ]
    }
    translator = MeshTranslator(build_view(result.config, runtime))
    sidecar = ProxyNode(
        id="productpage-v1-0", service="productpage", outbound_port=1, inbound_port=2, app_port=3
    )
    resources = translator.resources_for(sidecar)
    # Weights are relative: Envoy splits by their sum, so they go out as written.
    weights = [
        [c.weight.value for c in route.route.weighted_clusters.clusters]
        for config in resources.routes
        for host in config.virtual_hosts
        for route in host.routes
        if route.route.weighted_clusters.clusters
    ]
    assert [49, 50] in weights
    # Nothing is built for the port that is not carried; the carried ones of the entry stay.
    names = [cluster.name for cluster in resources.clusters]
    assert "outbound|80||api.example.com" in names
    assert "outbound|443||api.example.com" in names
    assert not [name for name in names if "|53|" in name]
    gateway = ProxyNode(id="ingressgateway", kind="gateway", labels=GATEWAY_LABELS)
    for proxy in (sidecar, gateway):
        checked = envoy_validate(static_bootstrap(translator.resources_for(proxy)), tmp_path)
        assert checked.returncode == 0, checked.stdout[-3000:]
