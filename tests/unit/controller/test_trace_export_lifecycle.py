"""The trace export across a control plane's stop and start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.agent.ports import free_port
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.controller.trace_export import TraceExport
from pilotfish.model.telemetry import TraceExporter
from pilotfish.telemetry.traces import Span

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, port: 8080, command: [web]}
"""
SPANS = [Span(trace_id="a" * 32, id="b" * 16, name="get")]


def nowhere() -> TraceExporter:
    # a port nobody listens on: the posts fail at once, which these tests do not look at
    return TraceExporter("z", "zipkin", f"http://127.0.0.1:{free_port()}/api/v2/spans")


async def test_a_control_plane_started_again_exports_again(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    control_plane = ControlPlane(tmp_path)
    exporter = nowhere()
    control_plane.trace_export = TraceExport(lambda: [exporter])
    await control_plane.start()
    await control_plane.stop()
    control_plane.trace_export.offer(SPANS)
    assert control_plane.trace_export.status_json() == []  # stopped: nothing is taken
    await control_plane.start()
    try:
        control_plane.trace_export.offer(SPANS)
        assert [lane["name"] for lane in control_plane.trace_export.status_json()] == ["z"]
    finally:
        await control_plane.stop()


class FailingServer:
    async def stop(self, grace: float) -> None:
        raise RuntimeError("the server would not stop")


async def test_the_trace_export_stops_even_when_the_server_stop_fails(tmp_path: Path) -> None:
    control_plane = ControlPlane(tmp_path)
    exporter = nowhere()
    control_plane.trace_export = TraceExport(lambda: [exporter])
    control_plane.trace_export.offer(SPANS)
    assert control_plane.trace_export.status_json() != []
    control_plane._server = FailingServer()
    with pytest.raises(RuntimeError, match="would not stop"):
        await control_plane.stop()
    assert control_plane.trace_export.status_json() == []
