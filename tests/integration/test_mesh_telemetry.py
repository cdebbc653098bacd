"""What a real `pilotfish up` mesh tells about its traffic: replies the mesh makes itself say
which proxy made them and why, the peer header never reaches an app, trace headers do, and
each Envoy's access log shows in up's output."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from tests.integration.mesh_harness import (
    Reply,
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.model.telemetry import RESPONSE_FLAG_WORDS

GATEWAY_ID = "ingressgateway"
# A format of ours, so that the inbound's log line shows the caller the peer header named.
LOG_FORMAT = (
    "access %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
    "peer=%DYNAMIC_METADATA(pilotfish.peer:id)%"
)


def mesh_yaml(gateway_port: int, closed_port: int) -> str:
    return (
        f"""
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  accessLogFile: /dev/stdout
  accessLogFormat: "{LOG_FORMAT}"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: closed}}
spec:
  hosts: [closed.example.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {closed_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: empty}}
spec:
  hosts: [empty.example.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /closed}}}}]
    route: [{{destination: {{host: closed.example.internal}}}}]
  - match: [{{uri: {{prefix: /empty}}}}]
    route: [{{destination: {{host: empty.example.internal}}}}]
  - match: [{{uri: {{prefix: /slow}}}}]
    route: [{{destination: {{host: echo}}}}]
    timeout: 0.5s
    retries: {{attempts: 0}}
  - match: [{{uri: {{prefix: /fault}}}}]
    route: [{{destination: {{host: echo}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
  - match: [{{uri: {{prefix: /echo}}}}]
    route: [{{destination: {{host: echo}}}}]
---
"""
        + gateway(gateway_port)
        + echo_workload("echo", "echo", 9000)
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("telemetry")
    gateway_port = free_port()
    write_yaml(directory / "mesh.yaml", mesh_yaml(gateway_port, free_port()))
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/echo")
        running.wait_synced()
        yield running


def text_of(reply: Reply) -> str:
    text = reply.body.get("text")
    assert isinstance(text, str), reply.body
    return text


@pytest.mark.parametrize(
    ("path", "status", "flag", "cluster"),
    [
        ("/closed", 503, "UF", "outbound|80||closed.example.internal"),
        ("/empty", 503, "UH", "outbound|80||empty.example.internal"),
        ("/slow?ms=3000", 504, "UT", "outbound|9000||echo.default.svc.cluster.local"),
        ("/fault", 418, "FI", "outbound|9000||echo.default.svc.cluster.local"),
        ("/nowhere", 404, "NR", "-"),
    ],
)
def test_a_reply_the_mesh_makes_itself_names_the_proxy_the_cause_and_the_cluster(
    mesh: RunningMesh, path: str, status: int, flag: str, cluster: str
) -> None:
    reply = mesh.get(path)

    assert reply.status == status
    text = text_of(reply)
    cause = f"pilotfish: {GATEWAY_ID} answered {status}: {RESPONSE_FLAG_WORDS[flag]}"
    # UH goes on with the cluster's outlier detection in parentheses.
    assert text.startswith((f"{cause};", f"{cause} (")), text
    assert f"cluster {cluster}," in text
    assert re.search(rf"\[([A-Z]+,)*{flag}(,[A-Z]+)*\]$", text.strip()), text
    assert "upstream connect error" not in text
    assert reply.headers.get("x-pilotfish-proxy") == GATEWAY_ID


def test_a_refused_connection_says_why_in_envoys_words_too(mesh: RunningMesh) -> None:
    text = text_of(mesh.get("/closed"))
    # Istio's default retries ran out on it: both flags, the cause (UF) in words.
    assert "[URX,UF]" in text
    # Envoy's details and transport failure reason, as the access log has them.
    assert "details upstream_reset_before_response_started{remote_connection_failure" in text
    assert ", delayed_connect_error:_Connection_refused [URX,UF]" in text


def test_the_app_never_sees_the_peer_header_and_a_forged_one_is_replaced(
    mesh: RunningMesh,
) -> None:
    reply = mesh.get("/echo/peer-check", {"x-pilotfish-peer": "forged-by-the-client"})

    assert reply.status == 200
    headers = reply.body["headers"]
    assert isinstance(headers, dict)
    assert "x-pilotfish-peer" not in headers
    # The callee's inbound read the header the gateway set before it removed it.
    line = "[echo-0 envoy] access /echo/peer-check 200 - peer=ingressgateway"
    wait_until(lambda: line in mesh.log(), 10, f"{line!r} in up's output\n{mesh.log()}")
    assert "forged-by-the-client" not in mesh.log()


def test_every_proxy_adds_w3c_and_b3_trace_headers_of_one_trace(mesh: RunningMesh) -> None:
    reply = mesh.get("/echo/traced")
    headers = reply.body["headers"]
    assert isinstance(headers, dict)
    traceparent = headers.get("traceparent")
    assert isinstance(traceparent, str), headers
    _version, trace_id, _parent, _flags = traceparent.split("-")
    assert headers.get("x-b3-traceid") == trace_id
    assert headers.get("x-b3-sampled") == "1"


def test_a_callers_trace_continues_through_the_mesh(mesh: RunningMesh) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = mesh.get("/echo/continued", {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    headers = reply.body["headers"]
    assert isinstance(headers, dict)
    assert headers.get("x-b3-traceid") == trace_id
    assert str(headers.get("traceparent")).split("-")[1] == trace_id


def test_access_log_lines_show_in_ups_output_per_proxy(mesh: RunningMesh) -> None:
    mesh.get("/echo/logged")
    mesh.get("/closed/logged")
    for line in (
        f"[{GATEWAY_ID} envoy] access /echo/logged 200 - peer=-",
        "[echo-0 envoy] access /echo/logged 200 - peer=ingressgateway",
        f"[{GATEWAY_ID} envoy] access /closed/logged 503 URX,UF peer=-",
    ):
        wait_until(
            lambda line=line: line in mesh.log(), 10, f"{line!r} in up's output\n{mesh.log()}"
        )
