"""`pilotfish up` (in process) with a CA that answers late: a replica joins its service only
once its sidecar holds a certificate, not when Envoy gives up waiting for its secret."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.integration.mesh_harness import echo_workload, write_yaml
from tests.waiting import eventually

from pilotfish.agent.ca_client import GrpcCertificateSigner
from pilotfish.ca.api import SignedCertificate
from pilotfish.runner.local_mesh import LocalMesh, LocalMeshSettings

HOST = "web.default.svc.cluster.local"


async def test_a_replica_joins_its_service_only_once_its_sidecar_holds_a_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(tmp_path / "mesh.yaml", echo_workload("web", "web", 8080))
    answer = asyncio.Event()
    sign = GrpcCertificateSigner.sign

    async def late_sign(self: GrpcCertificateSigner, csr: str, ttl: float) -> SignedCertificate:
        await answer.wait()
        return await sign(self, csr, ttl)

    monkeypatch.setattr(GrpcCertificateSigner, "sign", late_sign)
    mesh = LocalMesh(tmp_path, LocalMeshSettings(app_start_timeout=60))
    starting = asyncio.create_task(mesh.start())
    try:

        def envoy_ready() -> bool:
            replica = mesh.replicas.get("web-0")
            return replica is not None and replica.sidecar_started.done()

        # Without its secret, Envoy reports ready once SDS's initial fetch times out (15 s).
        await eventually(envoy_ready, "the sidecar's Envoy to report ready", timeout=40)
        sidecar = mesh.replicas["web-0"].sidecar
        assert sidecar.certificates is not None and not sidecar.certificates.ready.is_set()
        await asyncio.sleep(1)  # time to register it, if it were going to
        assert not mesh.replica_registry.endpoints().get(HOST)
        answer.set()
        await eventually(
            lambda: mesh.replica_registry.endpoints().get(HOST), "web-0 to join", timeout=30
        )
        assert sidecar.certificates.ready.is_set()
        await asyncio.wait_for(starting, 30)
    finally:
        answer.set()
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await mesh.stop()
