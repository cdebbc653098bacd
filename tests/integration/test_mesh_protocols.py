"""gRPC (HTTP/2) workloads, and the route actions that answer without a backend."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from tests.integration.mesh_harness import (
    APPS,
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)

GRPC_WORKLOAD = f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: greeter}}
spec:
  service: greeter
  port: 50051
  protocol: GRPC
  replicas: 2
  command: [{sys.executable}, {APPS / "grpc_echo.py"}]
---
"""
ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /echo.Echo/}}]
    route: [{destination: {host: greeter}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 429, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
    headers:
      request:
        set: {x-mesh: pilotfish}
        remove: [x-secret]
      response:
        set: {x-served-by: pilotfish-gateway}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("protocols")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port) + GRPC_WORKLOAD + echo_workload("web", "web", 8080) + ROUTES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints("greeter.default.svc.cluster.local", 2)
        running.wait_synced()
        yield running


def test_grpc_calls_cross_the_mesh_over_http2_to_every_replica(mesh: RunningMesh) -> None:
    target = mesh.gateway_url.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        answers = {say(b"hello", timeout=10) for _ in range(20)}
    assert answers == {b"greeter-0: hello", b"greeter-1: hello"}


def test_grpc_status_codes_come_back_unchanged(mesh: RunningMesh) -> None:
    target = mesh.gateway_url.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        with pytest.raises(grpc.RpcError) as failure:
            say(b"x", timeout=10, metadata=(("x-fail", "unavailable"),))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_redirect_and_direct_response_answer_at_the_gateway(mesh: RunningMesh) -> None:
    redirect = mesh.get("/old")
    assert redirect.status == 308
    assert redirect.headers.get("location", redirect.headers.get("Location", "")).endswith("/new")
    teapot = mesh.get("/teapot")
    assert teapot.status == 418
    assert teapot.body == {"text": "short and stout"}


def test_header_operations_reach_the_app_and_the_caller(mesh: RunningMesh) -> None:
    reply = mesh.get("/", {"x-secret": "hunter2", "x-mesh": "spoofed"})
    assert reply.status == 200
    seen = reply.body["headers"]
    assert isinstance(seen, dict)
    assert seen["x-mesh"] == "pilotfish"
    assert "x-secret" not in seen
    assert reply.headers.get("x-served-by") == "pilotfish-gateway"


def test_fault_injection_aborts_and_delays(mesh: RunningMesh) -> None:
    assert mesh.get("/", {"x-fault": "abort"}).status == 429
    started = time.monotonic()
    delayed = mesh.get("/", {"x-fault": "delay"})
    assert delayed.status == 200
    assert time.monotonic() - started >= 0.9  # the injected 1 s delay, not a speed claim
