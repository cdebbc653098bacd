"""Retries and timeouts, observed through a real gateway and sidecars."""

from __future__ import annotations

import time
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

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - name: no-retries
    match: [{headers: {x-retries: {exact: "off"}}}]
    route: [{destination: {host: flaky}}]
    retries: {attempts: 0}
  - name: route-timeout
    match: [{uri: {prefix: /slow}, headers: {x-timeout: {exact: route}}}]
    route: [{destination: {host: flaky}}]
    timeout: 0.5s
    retries: {attempts: 0}
  - name: per-try-timeout
    match: [{uri: {prefix: /slow}}]
    route: [{destination: {host: flaky}}]
    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}
  - name: with-retries
    route: [{destination: {host: flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("resilience")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port) + echo_workload("flaky", "flaky", 9000) + ROUTES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_synced()
        yield running


def test_retries_hide_a_backend_that_fails_every_other_request(mesh: RunningMesh) -> None:
    statuses = [mesh.get("/fail-every-other").status for _ in range(30)]
    assert statuses == [200] * 30


def test_without_retries_the_same_backend_fails_half_the_time(mesh: RunningMesh) -> None:
    # The control for the test above: the failures are real and only the retries hide them.
    statuses = [mesh.get("/fail-every-other", {"x-retries": "off"}).status for _ in range(30)]
    assert statuses.count(503) in range(13, 18), statuses


def test_route_timeout_answers_504_long_before_the_backend_would(mesh: RunningMesh) -> None:
    started = time.monotonic()
    reply = mesh.get("/slow?ms=5000", {"x-timeout": "route"})
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert elapsed < 4.0  # the backend needs 5 s; the 0.5 s route timeout cut it short


def test_per_try_timeout_gives_up_on_each_attempt(mesh: RunningMesh) -> None:
    started = time.monotonic()
    reply = mesh.get("/slow?ms=5000")
    elapsed = time.monotonic() - started
    # Three attempts of 0.3 s each, then Envoy answers 504 (no route timeout is set, so
    # without the per-try timeout this would wait the full 5 s).
    assert reply.status == 504
    assert elapsed < 4.0
