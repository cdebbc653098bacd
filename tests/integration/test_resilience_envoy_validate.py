"""Envoy itself accepts the clusters every resilience field of a DestinationRule produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.integration.test_translate_envoy_validate import envoy_validate, static_bootstrap

from pilotfish.agent.ports import free_port
from pilotfish.load import load_texts
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import ServicePort
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate import MeshTranslator

pytestmark = pytest.mark.integration

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 10
        connectTimeout: 300ms
        tcpKeepalive: {probes: 3, time: 30s, interval: 5s}
        maxConnectionDuration: 10m
        idleTimeout: 0s
      http:
        http1MaxPendingRequests: 5
        http2MaxRequests: 100
        maxRequestsPerConnection: 20
        maxRetries: 2
        idleTimeout: 30s
        maxConcurrentStreams: 50
        http2KeepAlive: {interval: 10s, timeout: 2s}
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      consecutiveLocalOriginFailures: 4
      splitExternalLocalOriginErrors: true
      interval: 1s
      baseEjectionTime: 5s
      maxEjectionPercent: 50
      minHealthPercent: 25
    retryBudget: {percent: 25, minRetryConcurrency: 2}
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {useClientProtocol: true, maxConcurrentStreams: 9}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool:
        http:
          h2UpgradePolicy: UPGRADE
          maxRequestsPerConnection: 3
          http2KeepAlive: {interval: 10s, timeout: 2s}
"""


def view() -> MeshView:
    service = Service(
        "backend.default.svc.cluster.local",
        (ServicePort(8080, "http"), ServicePort(9090, "grpc", "GRPC")),
        short_name="backend",
    )
    loaded = load_texts([("rule.yaml", RULE)], known_services={service.hostname: service})
    assert loaded.config is not None and loaded.diagnostics == (), loaded.diagnostics
    ports = {8080: free_port(), 9090: free_port()}
    return MeshView(
        config=loaded.config,
        services={service.hostname: service},
        endpoints={
            service.hostname: (
                Endpoint("127.0.0.1", ports, {"version": "v1"}, service_account="backend"),
            )
        },
    )


def test_envoy_accepts_every_resilience_field(tmp_path: Path) -> None:
    node = ProxyNode(
        id="frontend-0",
        service="frontend",
        outbound_port=free_port(),
        inbound_port=free_port(),
        app_port=free_port(),
    )
    bootstrap = static_bootstrap(MeshTranslator(view()).resources_for(node))
    emitted = json.dumps(bootstrap)
    for feature in ("retryBudget", "useDownstreamProtocolConfig", "connectionKeepalive"):
        assert feature in emitted, f"the scenario lost {feature}"

    result = envoy_validate(bootstrap, tmp_path)

    assert result.returncode == 0, result.stdout
