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
