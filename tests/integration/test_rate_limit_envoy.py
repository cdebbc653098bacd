"""RateLimitPolicy through a real Envoy 1.40: a sidecar's inbound listener, as translation
builds it, in front of a small HTTP app. Local limits are judged by the requests Envoy
admits; global ones by the descriptors Envoy sends to a rate limit service.

That service (``RecordingRateLimitService``) is test scaffolding that checks the wire of
``model.rate_limits`` from Envoy's side: it records what Envoy asks and answers from a
fixed list. The mesh's real service lives in the control plane; its end-to-end tests (shared
counters, Redis, failure modes under load) are separate.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from test_translate_envoy_validate import ENVOY, static_bootstrap
from tests.waiting import wait_until

from pilotfish.agent.bootstrap import build_bootstrap
from pilotfish.agent.ports import free_port
from pilotfish.load import load_texts
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.rate_limits import RateLimitSettings
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The admitted count of a local limit over a load loop: within this share (plus one
# request each way for where the loop starts and ends in a refill) of what the bucket allows.
RATE_TOLERANCE = 0.1

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, port: 8080, command: [app]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: plaintext}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {enableRequestTelemetry: false}
---
"""


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: Mapping[str, str]


def get(port: int, path: str = "/", headers: Mapping[str, str] | None = None) -> Answer:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=dict(headers or {}))
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return Answer(response.status, response.read().decode(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read().decode(), dict(error.headers))


class _App(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class RecordingRateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """Records each call's domain and descriptors; says OVER_LIMIT for a descriptor with one
    of ``over`` among its entries (naming its rule as the real service does) or of
    ``over_unnamed`` (naming none), answers too late for one with an entry of ``slow`` and
    fails at once for one with an entry of ``broken``."""

    over: frozenset[tuple[str, str]] = frozenset()
    over_unnamed: frozenset[tuple[str, str]] = frozenset()
    slow: frozenset[tuple[str, str]] = frozenset()
    broken: frozenset[tuple[str, str]] = frozenset()
    calls: list[tuple[str, list[list[tuple[str, str]]]]] = field(default_factory=list)

    def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        self.calls.append((request.domain, descriptors))
        if any(set(entries) & self.slow for entries in descriptors):
            time.sleep(0.5)
        if any(set(entries) & self.broken for entries in descriptors):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "not this one")
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for entries in descriptors:
            status = response.statuses.add(code=rls_pb2.RateLimitResponse.OK)
            if set(entries) & (self.over | self.over_unnamed):
                status.code = rls_pb2.RateLimitResponse.OVER_LIMIT
                response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
            if set(entries) & self.over:
                response.response_headers_to_add.add(
                    key="x-pilotfish-ratelimit", value=entries[0][1]
                )
        return response


@contextlib.contextmanager
def rate_limit_service(servicer: RecordingRateLimitService) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


@dataclass(frozen=True)
class Sidecar:
    port: int
    admin_port: int
    node: ProxyNode

    def stats(self) -> str:
        with NO_PROXY.open(f"http://127.0.0.1:{self.admin_port}/stats", timeout=10) as response:
            text: str = response.read().decode()
        return text


@contextlib.contextmanager
def sidecar(
    tmp_path: Path,
    policy: str,
    app_port: int,
    rls_port: int | None = None,
    settings: RateLimitSettings | None = None,
) -> Iterator[Sidecar]:
    """One Envoy running the sidecar inbound that translation builds for ``backend-0``,
    with the agent's clusters (``xds-grpc`` pointing at ``rls_port``)."""
    result = load_texts([("mesh.yaml", MESH + policy)])
    assert result.config is not None, result.diagnostics
    config = result.config
    if settings is not None:
        config = replace(config, mesh=replace(config.mesh, rate_limit=settings))
    node = ProxyNode(id="backend-0", service="backend", inbound_port=free_port(), app_port=app_port)
    resources = MeshTranslator(MeshView(config=config, services={}, endpoints={})).resources_for(
        node
    )
    bootstrap = static_bootstrap(resources)
    admin_port = free_port()
    agent = build_bootstrap(
        node, xds_address=("127.0.0.1", rls_port or free_port()), admin_port=admin_port
    )
    bootstrap["static_resources"]["clusters"].extend(agent["static_resources"]["clusters"])  # type: ignore[index]
    bootstrap["admin"] = agent["admin"]
    config_path = tmp_path / "envoy.json"
    config_path.write_text(json.dumps(bootstrap))
    log = (tmp_path / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1",
         "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Sidecar(node.inbound_port or 0, admin_port, node)
    try:

        def answering() -> bool:
            assert process.poll() is None, (tmp_path / "envoy.log").read_text()
            return get(running.port, "/ready-probe", {"x-probe": "1"}).status in (200, 429)

        wait_until(answering, 30, "the sidecar to answer")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def policy(spec: str) -> str:
    indented = "\n".join("  " + line for line in spec.strip("\n").split("\n"))
    return (
        "apiVersion: pilotfish.io/v1alpha1\nkind: RateLimitPolicy\n"
        f"metadata: {{name: limits}}\nspec:\n{indented}\n"
    )


# --- local limits -------------------------------------------------------------------------------

PER_SECOND = 20


def test_a_local_limit_admits_its_rate_and_the_429s_say_why(tmp_path: Path) -> None:
    spec = f"""
targetRef: {{kind: Service, name: backend}}
local:
  rules:
  - clientSelectors: [{{headers: [{{name: x-load, value: "yes"}}]}}]
    limit: {{requests: {PER_SECOND}, unit: Second}}
"""
    with http_app() as app, sidecar(tmp_path, policy(spec), app) as proxy:
        # A bounded loop, far faster than the limit: at most 3 s and 3000 requests.
        statuses: list[int] = []
        refused: Answer | None = None
        started = time.monotonic()
        while time.monotonic() - started < 3.0 and len(statuses) < 3000:
            answer = get(proxy.port, "/load", {"x-load": "yes"})
            statuses.append(answer.status)
            if answer.status == 429 and refused is None:
                refused = answer
        elapsed = time.monotonic() - started
        stats = proxy.stats()

    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert statuses.count(429) > admitted, "the loop never outran the limit"
    # A full bucket to start with, then the refill rate (Envoy refills continuously).
    allowed = PER_SECOND + PER_SECOND * elapsed
    assert abs(admitted - allowed) <= RATE_TOLERANCE * allowed + 1, (admitted, allowed, elapsed)
    assert refused is not None
    assert refused.headers["x-pilotfish-ratelimit"] == "default/limits/local/0"
    assert refused.headers["x-pilotfish-proxy"] == "backend-0"
    assert refused.headers["x-ratelimit-limit"] == str(PER_SECOND)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert "x-ratelimit-reset" in refused.headers
    assert refused.body == (
        "pilotfish: backend-0 answered 429: rate limit default/limits local/0 "
        f"({PER_SECOND} per Second) [RL]\n"
    )
    assert "ratelimit_default_limits_local_0.http_local_rate_limit.rate_limited:" in stats


def test_selectors_limit_only_the_requests_they_match(tmp_path: Path) -> None:
    spec = """
targetRef: {kind: Service, name: backend}
local:
  rules:
  - clientSelectors: [{headers: [{name: x-plan, value: free}]}]
    limit: {requests: 2, unit: Minute}
  - clientSelectors: [{path: {type: Exact, value: /login}}]
    limit: {requests: 1, unit: Minute}
  - clientSelectors: [{headers: [{name: x-user, type: Distinct}], path: {value: /api}}]
    limit: {requests: 1, unit: Hour}
"""
    with http_app() as app, sidecar(tmp_path, policy(spec), app) as proxy:
        free = [get(proxy.port, "/", {"x-plan": "free"}) for _ in range(4)]
        paid = [get(proxy.port, "/", {"x-plan": "paid"}).status for _ in range(4)]
        login = [get(proxy.port, "/login?next=/").status for _ in range(3)]
        below_login = [get(proxy.port, "/login/help").status for _ in range(3)]
        alice = [get(proxy.port, "/api/v1", {"x-user": "alice"}) for _ in range(2)]
        bob = get(proxy.port, "/api", {"x-user": "bob"}).status
        no_user = [get(proxy.port, "/api").status for _ in range(3)]
        elsewhere = get(proxy.port, "/apis", {"x-user": "alice"}).status

    assert [a.status for a in free] == [200, 200, 429, 429]
    assert "rate limit default/limits local/0 (2 per Minute)" in free[2].body
    assert paid == [200] * 4
    assert login == [200, 429, 429]
    assert below_login == [200] * 3
    assert [a.status for a in alice] == [200, 429]
    assert alice[1].headers["x-pilotfish-ratelimit"] == "default/limits/local/2"
    assert "local/2 (1 per Hour)" in alice[1].body
    assert bob == 200  # a counter per user
    assert no_user == [200] * 3  # no header: the rule does not apply
    assert elsewhere == 200  # /apis is not under /api


# --- global limits: the wire ---------------------------------------------------------------------

GLOBAL = """
targetRef: {kind: Service, name: backend}
global:
  rules:
  - clientSelectors: [{headers: [{name: x-user, type: Distinct}], path: {value: /api}}]
    limit: {requests: 10, unit: Minute}
  - limit: {requests: 1000, unit: Hour}
  - clientSelectors:
    - headers: [{name: x-plan, value: free}]
      sourceCIDR: {type: Distinct, value: 0.0.0.0/24}
    - sourceCIDR: {value: 127.0.0.0/8}
    limit: {requests: 5, unit: Second}
"""


def test_envoy_sends_the_descriptors_of_the_wire_and_names_the_rule_over_limit(
    tmp_path: Path,
) -> None:
    servicer = RecordingRateLimitService(
        over=frozenset({("header:x-user", "mallory")}),
        over_unnamed=frozenset({("header:x-user", "anon")}),
        slow=frozenset({("header:x-user", "sloth")}),
        broken=frozenset({("header:x-user", "oops")}),
    )
    settings = RateLimitSettings(failure_mode="deny", timeout=0.05)
    with (
        http_app() as app,
        rate_limit_service(servicer) as rls_port,
        sidecar(tmp_path, policy(GLOBAL), app, rls_port, settings) as proxy,
    ):
        servicer.calls.clear()  # the readiness probe's
        plain = get(proxy.port, "/other")
        alice = get(proxy.port, "/api/v1", {"x-user": "alice", "x-plan": "free"})
        mallory = get(proxy.port, "/api", {"x-user": "mallory"})
        anon = get(proxy.port, "/api", {"x-user": "anon"})
        sloth = get(proxy.port, "/api", {"x-user": "sloth"})
        oops = get(proxy.port, "/api", {"x-user": "oops"})
        calls = list(servicer.calls)

    assert plain.status == 200
    assert alice.status == 200
    every = [("pilotfish_rule", "default/limits/global/1")]
    assert calls[0] == ("pilotfish", [every])
    assert calls[1] == (
        "pilotfish",
        [
            [
                ("pilotfish_rule", "default/limits/global/0"),
                ("header:x-user", "alice"),
                ("path", "/api"),
            ],
            every,
            [
                ("pilotfish_rule", "default/limits/global/2"),
                ("header_match", "x-plan"),
                ("masked_remote_address", "127.0.0.0/24"),
                ("masked_remote_address", "127.0.0.0/8"),
            ],
        ],
    )
    assert mallory.status == 429
    assert mallory.headers["x-pilotfish-ratelimit"] == "default/limits/global/0"
    assert mallory.body == (
        "pilotfish: backend-0 answered 429: rate limit default/limits global/0 "
        "(10 per Minute) [RL]\n"
    )
    assert anon.status == 429
    assert anon.body == (
        "pilotfish: backend-0 answered 429: the mesh's rate limit service said over limit [RL]\n"
    )
    # failureMode deny: a service that does not answer within the timeout, or answers
    # with an error at once, refuses; Envoy tells the two apart nowhere, nor does the body.
    fail_closed = (
        "pilotfish: backend-0 answered 500: the mesh's rate limit service failed or did not "
        f"answer within 50 ms and failureMode is deny; cluster inbound|{app}||, route -, "
        "details rate_limiter_error, - [RLSE]\n"
    )
    assert (sloth.status, sloth.body) == (500, fail_closed)
    assert (oops.status, oops.body) == (500, fail_closed)


# --- a gateway target ----------------------------------------------------------------------------

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: PORT, name: http, protocol: HTTP}, hosts: ["*"]}]
---
"""


@contextlib.contextmanager
def gateway(tmp_path: Path, text: str) -> Iterator[Callable[[int], Answer]]:
    """A real Envoy with the gateway config of ``text``; yields a GET of ``/`` on a port
    that waits for the first answer."""
    result = load_texts([("mesh.yaml", text)])
    assert result.config is not None, result.diagnostics
    node = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})
    view = MeshView(config=result.config, services={}, endpoints={})
    resources = MeshTranslator(view).resources_for(node)
    bootstrap = static_bootstrap(resources)
    agent = build_bootstrap(node, xds_address=("127.0.0.1", free_port()), admin_port=free_port())
    bootstrap["static_resources"]["clusters"].extend(agent["static_resources"]["clusters"])  # type: ignore[index]
    bootstrap["admin"] = agent["admin"]
    config_path = tmp_path / "envoy.json"
    config_path.write_text(json.dumps(bootstrap))
    log = (tmp_path / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def first_answer(port: int) -> Answer:
        def answering() -> Answer:
            assert process.poll() is None, (tmp_path / "envoy.log").read_text()
            return get(port, "/")

        return wait_until(answering, 30, f"the gateway to answer on {port}")

    try:
        yield first_answer
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_a_gateway_policy_limits_the_gateways_own_listener(tmp_path: Path) -> None:
    gateway_port = free_port()
    spec = """
targetRef: {kind: Gateway, name: gw}
local:
  rules:
  - limit: {requests: 2, unit: Minute}
global:
  rules:
  - clientSelectors: [{path: {type: RegularExpression, value: "/a.*"}}]
    limit: {requests: 2, unit: Minute}
"""
    text = MESH + GATEWAY.replace("PORT", str(gateway_port)) + policy(spec)
    with gateway(tmp_path, text) as first_answer:
        answers = [first_answer(gateway_port), get(gateway_port, "/"), get(gateway_port, "/")]

    # No route matches (no VirtualService), so Envoy answers 404 itself until the bucket runs out.
    assert [a.status for a in answers] == [404, 404, 429]
    assert answers[2].body == (
        "pilotfish: ingress-0 answered 429: rate limit default/limits local/0 (2 per Minute) [RL]\n"
    )


def test_a_gateway_local_limit_is_counted_apart_on_each_port_as_the_load_warns(
    tmp_path: Path,
) -> None:
    """What the load's warning says ("up to 2 x"): Envoy 1.40 keeps a bucket per listener."""
    one, two = free_port(), free_port()
    servers = f"""
  servers:
  - {{port: {{number: {one}, name: http, protocol: HTTP}}, hosts: ["*"]}}
  - {{port: {{number: {two}, name: http-two, protocol: HTTP}}, hosts: ["*"]}}
---
"""
    two_ports = GATEWAY.split("  servers:")[0] + servers
    spec = (
        "targetRef: {kind: Gateway, name: gw}\n"
        "local: {rules: [{limit: {requests: 1, unit: Minute}}]}"
    )
    text = MESH + two_ports + policy(spec)
    (warning,) = [d for d in load_texts([("mesh.yaml", text)]).diagnostics if "x each" in str(d)]
    assert "up to 2 x each local limit" in warning.message
    with gateway(tmp_path, text) as first_answer:
        answers = [first_answer(one), get(one), first_answer(two), get(two)]

    assert [a.status for a in answers] == [404, 429, 404, 429]
