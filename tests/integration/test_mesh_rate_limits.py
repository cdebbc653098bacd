"""A local RateLimitPolicy in `pilotfish up`: each replica of the target keeps its own bucket
on its sidecar's inbound (over mTLS, through the gateway), and every 429 names the replica's
proxy and the rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)

PER_REPLICA = 3
ROUTES = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: limited}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: limited}}
spec:
  host: limited
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
---
apiVersion: pilotfish.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-replica}}
spec:
  targetRef: {{kind: Service, name: limited}}
  local:
    rules:
    - clientSelectors: [{{path: {{value: /limited}}}}]
      limit: {{requests: {PER_REPLICA}, unit: Hour}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("rate-limits")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port) + echo_workload("limited", "limited", 9000, replicas=2) + ROUTES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_endpoints("limited.default.svc.cluster.local", 2)
        running.wait_serving("/")
        running.wait_synced()
        yield running


def test_each_replica_admits_its_own_limit_and_names_itself_when_it_refuses(
    mesh: RunningMesh,
) -> None:
    replies = [mesh.get("/limited/x") for _ in range(4 * PER_REPLICA)]

    admitted = Counter(str(r.body.get("replica")) for r in replies if r.status == 200)
    refused = [r for r in replies if r.status != 200]
    assert {r.status for r in refused} == {429}, [r.body for r in refused]
    # Round robin over two replicas: each got half, and each admitted its own limit.
    assert sorted(admitted.values()) == [PER_REPLICA, PER_REPLICA], admitted
    refusing = Counter(r.headers["x-pilotfish-proxy"] for r in refused)
    assert sorted(refusing) == sorted(admitted), (refusing, admitted)
    for reply in refused:
        proxy = reply.headers["x-pilotfish-proxy"]
        assert reply.headers["x-pilotfish-ratelimit"] == "default/per-replica/local/0"
        assert reply.body == {
            "text": f"pilotfish: {proxy} answered 429: rate limit default/per-replica local/0 "
            f"({PER_REPLICA} per Hour) [RL]\n"
        }


def test_requests_the_rule_does_not_select_are_not_limited(mesh: RunningMesh) -> None:
    assert [mesh.get("/other").status for _ in range(4 * PER_REPLICA)] == [200] * 4 * PER_REPLICA
