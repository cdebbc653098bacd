"""Golden files: the full resources for one proxy, as sorted JSON. UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import http_port, mesh_service, meta, quickstart_config, replica, view_of
from google.protobuf import json_format

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import TrafficPolicy
from pilotfish.model.security import ClientTLSSettings, PeerAuthentication
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator, ProxyResources

GOLDEN_DIR = Path(__file__).parent / "golden"

SCENARIOS = [
    ("quickstart_sidecar", "quickstart_view", "frontend_sidecar"),
    ("quickstart_gateway", "quickstart_view", "ingress_gateway"),
    ("gateway", "gateway_view", "ingress_gateway"),
    ("service_entries", "service_entry_view", "frontend_sidecar"),
    ("consistent_hash", "consistent_hash_view", "frontend_sidecar"),
    ("fault", "fault_view", "frontend_sidecar"),
    ("routing_features", "routing_features_view", "frontend_sidecar"),
    ("authorization", "authorization_view", "frontend_sidecar"),
    ("mtls_sidecar", "mtls_view", "frontend_sidecar"),
]


@pytest.fixture
def mtls_view() -> MeshView:
    """The quickstart with STRICT mTLS for the frontend, sidecars behind the backend's v1 and
    v2 under their own accounts, and a DestinationRule that turns TLS off for the v2 subset."""
    config = quickstart_config()
    (rule,) = config.destination_rules
    plain_v2 = replace(
        rule.subsets[1], traffic_policy=TrafficPolicy(tls=ClientTLSSettings("DISABLE"))
    )
    policy = PeerAuthentication(meta("PeerAuthentication", "strict"), "STRICT")
    config = replace(
        config,
        destination_rules=(replace(rule, subsets=(rule.subsets[0], plain_v2)),),
        peer_authentications=(policy,),
    )
    return view_of(
        config,
        mesh_service("frontend", http_port(8080)),
        mesh_service("backend", http_port(8080)),
        frontend=(replace(replica(8080, 15006, {"app": "frontend"}), service_account="frontend"),),
        backend=(
            replace(
                replica(8080, 16006, {"app": "backend", "version": "v1"}),
                service_account="backend",
            ),
            replace(
                replica(8080, 17006, {"app": "backend", "version": "v2"}),
                service_account="backend-v2",
            ),
        ),
    )


def resources_to_json(resources: ProxyResources) -> str:
    document = {
        kind: [json_format.MessageToDict(message) for message in getattr(resources, kind)]
        for kind in ("clusters", "load_assignments", "listeners", "routes")
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize(
    ("golden", "view_fixture", "node_fixture"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_resources_match_golden_file(
    golden: str, view_fixture: str, node_fixture: str, request: pytest.FixtureRequest
) -> None:
    view: MeshView = request.getfixturevalue(view_fixture)
    node: ProxyNode = request.getfixturevalue(node_fixture)

    produced = resources_to_json(MeshTranslator(view).resources_for(node))

    path = GOLDEN_DIR / f"{golden}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(produced)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review the diff"
    assert produced == path.read_text()


def test_serialization_is_deterministic(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    first = resources_to_json(MeshTranslator(quickstart_view).resources_for(frontend_sidecar))
    second = resources_to_json(MeshTranslator(quickstart_view).resources_for(frontend_sidecar))
    assert first == second
