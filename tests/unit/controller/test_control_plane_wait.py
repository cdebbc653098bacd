"""ControlPlane.wait_until_pushed waits for what happened on the streams, not for a while."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from grpc_fakes import FakeContext, FakeRequests
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.controller.mesh_controller import MeshController
from pilotfish.discovery import InMemoryRegistry
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import Endpoint
from pilotfish.snapshot import Snapshot, type_urls
from pilotfish.xds import AggregatedDiscoveryServicer

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, port: 8080, command: [web], labels: {version: v1}}
"""
HOSTNAME = "web.default.svc.cluster.local"
CLUSTER = f"outbound|8080||{HOSTNAME}"
NODE = ProxyNode(id="web-0", service="web", outbound_port=1, inbound_port=2, app_port=3)
STEP = 5.0  # bounds each wait so that a hang fails the test instead of stalling the suite


class LateSource:
    """The controller, except that the stream hears of a new generation only when released:
    a stream whose task runs late, as one does with many proxies translating on the loop."""

    def __init__(self, controller: MeshController) -> None:
        self._controller = controller
        self.release = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._controller.generation

    async def wait_for_change(self, seen_generation: int) -> int:
        generation = await self._controller.wait_for_change(seen_generation)
        await self.release.wait()
        return generation

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        return self._controller.snapshot_for(node)


def eds_request(response: Any | None = None) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=type_urls.ENDPOINT, resource_names=[CLUSTER])
    if response is None:
        metadata = struct_pb2.Struct()
        metadata.update(NODE.to_metadata())  # type: ignore[arg-type]
        request.node.CopyFrom(base_pb2.Node(id=NODE.id, metadata=metadata))
    else:
        request.version_info = response.version_info
        request.response_nonce = response.nonce
    return request


async def test_a_push_is_waited_for_until_a_late_stream_took_it_and_answered(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    replicas = InMemoryRegistry()
    plane = ControlPlane(tmp_path, registries=(replicas,))
    await plane.load_initial_config()
    source = LateSource(plane.controller)
    servicer = AggregatedDiscoveryServicer(source, [plane.board])
    requests, context = FakeRequests(), FakeContext()
    requests.send(eds_request())
    stream = asyncio.create_task(servicer.StreamAggregatedResources(requests.stream(), context))
    try:
        first = await asyncio.wait_for(context.written.get(), STEP)
        requests.send(eds_request(first))
        assert await plane.wait_until_pushed(timeout=STEP) is True  # all ACKed: returns

        endpoint = Endpoint(address="127.0.0.1", ports={8080: 9000}, labels={"version": "v1"})
        replicas.set_endpoint(HOSTNAME, "web-0", endpoint)
        waiter = asyncio.create_task(plane.wait_until_pushed(timeout=STEP))
        # The board still shows every proxy SYNCED on the old generation, which is all a
        # poll of statuses could see: the wait must go on, however long it looks.
        done, _ = await asyncio.wait({waiter}, timeout=0.3)
        assert not done

        source.release.set()
        pushed = await asyncio.wait_for(context.written.get(), STEP)
        assert pushed.version_info != first.version_info
        await asyncio.sleep(0)
        assert not waiter.done()  # sent, not yet answered
        requests.send(eds_request(pushed))
        assert await asyncio.wait_for(waiter, STEP) is True
        status = plane.board.find(NODE.id)
        assert status is not None
        eds = status.type_status(type_urls.ENDPOINT)
        assert eds is not None and eds.acked_version == pushed.version_info
    finally:
        requests.send(None)
        await asyncio.wait_for(stream, STEP)
