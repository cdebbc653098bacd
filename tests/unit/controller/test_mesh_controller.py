from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from pilotfish.controller.mesh_controller import MeshController, publish_delay
from pilotfish.controller.preflight import preflight
from pilotfish.discovery import InMemoryRegistry
from pilotfish.errors import PilotfishError
from pilotfish.load import load_text
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import Endpoint
from pilotfish.snapshot import Input, NodeGenerator, SnapshotCache, type_urls
from pilotfish.translate import GENERATORS, MeshTranslator, TranslationContext

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, port: 8080, command: [web], labels: {version: v1}}
"""
HOSTNAME = "web.default.svc.cluster.local"
SIDECAR = ProxyNode(id="web-0", service="web", outbound_port=1, inbound_port=2, app_port=3)


def config(text: str = MESH) -> MeshConfig:
    result = load_text(text, "mesh.yaml", directory=Path("/tmp"))
    assert result.config is not None, result.diagnostics
    return result.config


def endpoint(port: int) -> Endpoint:
    return Endpoint(
        address="127.0.0.1", ports={8080: port}, labels={"version": "v1"}, name=str(port)
    )


def endpoint_ports(controller: MeshController, node: ProxyNode = SIDECAR) -> list[int]:
    snapshot = controller.snapshot_for(node)
    assert snapshot is not None
    ports = []
    for resource in snapshot.of_type(type_urls.ENDPOINT).values():
        assignment = endpoint_pb2.ClusterLoadAssignment()
        resource.any.Unpack(assignment)
        if assignment.cluster_name == f"outbound|8080||{HOSTNAME}":
            ports = [
                e.endpoint.address.socket_address.port_value
                for locality in assignment.endpoints
                for e in locality.lb_endpoints
            ]
    return sorted(ports)


async def test_no_snapshot_before_a_config_is_applied() -> None:
    controller = MeshController()
    assert controller.snapshot_for(SIDECAR) is None
    assert controller.generation == 0


async def test_a_burst_of_endpoint_changes_is_published_once() -> None:
    replicas = InMemoryRegistry()
    controller = MeshController([replicas], debounce_seconds=0.01)
    controller.apply_config(config(), ())
    controller.publish_now()
    first = controller.generation
    for port in (7001, 7002, 7003):
        replicas.set_endpoint(HOSTNAME, str(port), endpoint(port))
    assert controller.publish_pending
    assert await asyncio.wait_for(controller.wait_for_change(first), 5) == first + 1
    assert endpoint_ports(controller) == [7001, 7002, 7003]
    await asyncio.sleep(0.05)
    assert controller.generation == first + 1


async def test_a_change_after_quiet_goes_out_at_once_and_the_next_waits_the_window() -> None:
    replicas = InMemoryRegistry()
    now = [1000.0]
    # A window far longer than the test: only a publish that did not wait for it can pass.
    controller = MeshController([replicas], debounce_seconds=3600, clock=lambda: now[0])
    controller.apply_config(config(), ())
    await asyncio.wait_for(controller.wait_for_change(0), 5)
    first = controller.generation
    now[0] += 3601  # a quiet spell longer than the window
    for port in (7001, 7002):
        replicas.set_endpoint(HOSTNAME, str(port), endpoint(port))
    assert controller.publish_pending
    # Published as soon as the loop turns over, and both changes of that turn are in it ...
    assert await asyncio.wait_for(controller.wait_for_change(first), 5) == first + 1
    assert endpoint_ports(controller) == [7001, 7002]
    # ... but that publish opened the window: the next change waits for it to end.
    replicas.set_endpoint(HOSTNAME, "7003", endpoint(7003))
    for _ in range(5):
        await asyncio.sleep(0)
    assert controller.publish_pending
    assert controller.generation == first + 1


def test_the_publish_delay_is_none_after_quiet_and_the_rest_of_the_window_otherwise() -> None:
    assert publish_delay(None, now=100.0, debounce=0.02) == 0.0
    assert publish_delay(99.0, now=100.0, debounce=0.02) == 0.0
    assert publish_delay(100.0, now=100.005, debounce=0.02) == pytest.approx(0.015)
    assert publish_delay(100.0, now=100.0, debounce=0.02) == pytest.approx(0.02)


async def test_setting_the_same_endpoint_again_publishes_nothing() -> None:
    replicas = InMemoryRegistry()
    controller = MeshController([replicas], debounce_seconds=0.01)
    controller.apply_config(config(), ())
    replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))
    controller.publish_now()
    replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))
    replicas.set_endpoint(HOSTNAME, "missing", None)
    assert not controller.publish_pending


async def test_a_rejected_config_keeps_the_last_good_one_and_reports_why() -> None:
    controller = MeshController()
    controller.apply_config(config(), ())
    controller.publish_now()
    good = controller.snapshot_for(SIDECAR)
    problem = Diagnostic("mesh.yaml", 3, 5, "spec.port", "must be an integer")
    assert controller.apply_config(None, (problem,)) is False
    assert controller.snapshot_for(SIDECAR) is good
    assert controller.status.rejected_at is not None
    assert controller.status.diagnostics == (problem,)
    assert controller.status.applied_at is not None


class Breakable:
    """A generator of the sidecar's own that can be told to fail, as a translation bug would."""

    def __init__(self) -> None:
        self.broken = False

    def build(self, _context: TranslationContext, _node: ProxyNode) -> tuple[()]:
        if self.broken:
            raise ValueError("Value out of range")
        return ()


def breakable_controller(max_proxies: int = 4096) -> tuple[MeshController, Breakable]:
    breakable = Breakable()
    generator = NodeGenerator(
        "breakable", type_urls.LISTENER, frozenset({Input.CONFIG}), breakable.build
    )
    cache = SnapshotCache((*GENERATORS, generator), TranslationContext, max_proxies=max_proxies)
    return MeshController(cache=cache), breakable


async def test_a_proxy_whose_translation_fails_keeps_its_last_good_snapshot() -> None:
    controller, breakable = breakable_controller()
    controller.apply_config(config(), ())
    controller.publish_now()
    good = controller.snapshot_for(SIDECAR)
    assert good is not None

    breakable.broken = True
    controller.apply_config(config(), ())  # a reload: outputs that depend on config are rebuilt
    controller.publish_now()
    assert controller.snapshot_for(SIDECAR) is good
    assert any("Value out of range" in p for p in controller.status.snapshot_problems)
    newcomer = ProxyNode(id="new-0", service="web", outbound_port=4, inbound_port=5, app_port=6)
    assert controller.snapshot_for(newcomer) is None
    # Same id, other ports (a replaced replica): its predecessor's listeners would be wrong.
    replaced = ProxyNode(id="web-0", service="web", outbound_port=7, inbound_port=8, app_port=9)
    assert controller.snapshot_for(replaced) is None

    breakable.broken = False
    controller.apply_config(config(), ())
    controller.publish_now()
    assert controller.snapshot_for(SIDECAR) is not None
    assert controller.status.snapshot_problems == ()


async def test_remembered_proxies_are_bounded() -> None:
    controller, breakable = breakable_controller(max_proxies=3)
    controller.apply_config(config(), ())
    controller.publish_now()
    nodes = [
        ProxyNode(id=f"n{index}", service="web", outbound_port=1, inbound_port=2, app_port=3)
        for index in range(5)
    ]
    for node in nodes:
        assert controller.snapshot_for(node) is not None
    breakable.broken = True
    controller.apply_config(config(), ())
    controller.publish_now()
    remembered = [node.id for node in nodes if controller.snapshot_for(node) is not None]
    assert remembered == ["n2", "n3", "n4"]


def test_preflight_accepts_a_good_config() -> None:
    assert preflight(config(), Path("/cfg")) == ()


def test_preflight_turns_a_translation_failure_into_a_diagnostic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: MeshTranslator, node: ProxyNode) -> object:
        raise ValueError("Value out of range: 99999999999")

    monkeypatch.setattr(MeshTranslator, "resources_for", broken)
    problems = preflight(config(), Path("/cfg"))
    assert [(p.file, p.severity) for p in problems] == [("/cfg", "error")]
    assert "Value out of range" in problems[0].message


async def test_an_endpoint_change_gives_the_same_snapshot_as_building_afresh() -> None:
    """Own resources kept across generations must not hide a change."""
    replicas = InMemoryRegistry()
    controller = MeshController([replicas])
    controller.apply_config(config(), ())
    replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))
    controller.publish_now()
    controller.snapshot_for(SIDECAR)
    replicas.set_endpoint(HOSTNAME, "b", endpoint(7002))
    controller.publish_now()
    kept = controller.snapshot_for(SIDECAR)
    assert kept is not None
    fresh_replicas = InMemoryRegistry()
    fresh = MeshController([fresh_replicas])
    fresh.apply_config(controller.config, ())
    fresh_replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))
    fresh_replicas.set_endpoint(HOSTNAME, "b", endpoint(7002))
    fresh.publish_now()
    rebuilt = fresh.snapshot_for(SIDECAR)
    assert rebuilt is not None
    for type_url in (type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.LISTENER, type_urls.ROUTE):
        assert {n: r.version for n, r in kept.of_type(type_url).items()} == {
            n: r.version for n, r in rebuilt.of_type(type_url).items()
        }
    assert endpoint_ports(controller) == [7001, 7002]


async def test_routes_may_name_services_only_another_registry_knows() -> None:
    """A registry's own services join the view; the config validates against them too."""
    from pilotfish.load import load_texts
    from pilotfish.model.resources import ServicePort
    from pilotfish.model.services import Service

    payments = "payments.default.svc.cluster.local"
    registry = InMemoryRegistry()
    registry.set_service(
        Service(payments, (ServicePort(8080, "http", "HTTP"),), short_name="payments")
    )
    registry.set_endpoint(payments, "p-0", Endpoint("127.0.0.1", {8080: 7555}))
    routing = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: payments}}]}]
"""
    controller = MeshController([registry])
    assert load_texts([("mesh.yaml", MESH + "---" + routing)]).config is None
    result = load_texts(
        [("mesh.yaml", MESH + "---" + routing)], known_services=controller.registry_services()
    )
    assert result.config is not None, result.diagnostics
    controller.apply_config(result.config, result.diagnostics)
    controller.publish_now()
    snapshot = controller.snapshot_for(SIDECAR)
    assert snapshot is not None
    assert f"outbound|8080||{payments}" in snapshot.of_type(type_urls.CLUSTER)
    assignment = endpoint_pb2.ClusterLoadAssignment()
    snapshot.of_type(type_urls.ENDPOINT)[f"outbound|8080||{payments}"].any.Unpack(assignment)
    assert [
        e.endpoint.address.socket_address.port_value for e in assignment.endpoints[0].lb_endpoints
    ] == [7555]


def test_registries_set_up_before_serving_and_a_closed_controller() -> None:
    replicas = InMemoryRegistry()
    controller = MeshController([replicas])
    replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))  # before any loop: read at first publish
    controller.close()

    async def publish_then_change() -> bool:
        controller.apply_config(config(), ())
        controller.publish_now()
        replicas.set_endpoint(HOSTNAME, "b", endpoint(7002))
        return controller.publish_pending

    assert asyncio.run(publish_then_change()) is False  # closed: the change schedules nothing
    assert endpoint_ports(controller) == [7001]  # set before serving, read by the first publish


def test_a_registry_changed_outside_the_running_loop_is_a_clear_error() -> None:
    replicas = InMemoryRegistry()
    controller = MeshController([replicas])

    async def serve() -> None:
        controller.apply_config(config(), ())
        controller.publish_now()

    asyncio.run(serve())
    with pytest.raises(PilotfishError, match="outside the control plane's event loop"):
        replicas.set_endpoint(HOSTNAME, "a", endpoint(7001))
