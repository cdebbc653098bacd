"""The CA over real gRPC on the xDS port: Istio's CreateCertificate, credentials bound to an
identity, the trust-bundle stream, the admin API and CLI, and a restart that keeps the root."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession

from pilotfish.admin.server import start_admin_server
from pilotfish.agent.ca_client import CertificateAuthorityUnavailable, GrpcCertificateSigner
from pilotfish.agent.ports import free_port
from pilotfish.ca import wire
from pilotfish.ca.api import CertificateRefused
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.ca.issuer import certificate_pem, new_self_signed_root
from pilotfish.cli.main import main
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.identity import Identity

WEB = Identity("example.org", "shop", "web")
API = Identity("example.org", "shop", "api")
MESH = """apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  trustDomain: example.org
  certificates: {workloadTTL: 1h}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mesh.yaml").write_text(MESH)
    return tmp_path


@contextlib.asynccontextmanager
async def running(folder: Path) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(folder)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(0.1)


@contextlib.asynccontextmanager
async def signer_for(
    plane: ControlPlane, identity: Identity
) -> AsyncIterator[GrpcCertificateSigner]:
    signer = GrpcCertificateSigner(
        f"127.0.0.1:{plane.xds_port}", plane.ca_credential(identity), node_id="web-0"
    )
    try:
        yield signer
    finally:
        await signer.close()


def openssl_verify(tmp_path: Path, roots: tuple[str, ...], chain: tuple[str, ...]) -> None:
    (tmp_path / "roots.pem").write_text("".join(roots))
    (tmp_path / "leaf.pem").write_text(chain[0])
    (tmp_path / "untrusted.pem").write_text("".join(chain[1:]) or chain[0])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-partial_chain",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_csr_for_a_foreign_identity_is_refused_and_logged(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        with (
            caplog.at_level(logging.WARNING, "pilotfish.ca"),
            pytest.raises(
                CertificateRefused,
                match=r"PERMISSION_DENIED: the CSR asks for spiffe://example\.org/ns/shop/sa/api",
            ),
        ):
            await signer.sign(new_key_and_csr(API)[1], 3600)
        assert "refused a certificate to peer ipv4:127.0.0.1:" in caplog.text
        assert "node 'web-0' proving spiffe://example.org/ns/shop/sa/web" in caplog.text
        forged = GrpcCertificateSigner(f"127.0.0.1:{plane.xds_port}", "pf1.d2Vi.Zm9v")
        with pytest.raises(CertificateRefused, match="UNAUTHENTICATED"):
            await forged.sign(new_key_and_csr(WEB)[1], 3600)
        await forged.close()


async def test_a_good_csr_is_signed_and_its_chain_verifies_to_the_bundle(
    folder: Path, tmp_path: Path
) -> None:
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        signed = await signer.sign(new_key_and_csr(WEB)[1], 600)
        assert signed.issuer_epoch == 1
        assert len(signed.chain_pem) == 1  # the leaf alone: the root comes with the bundle
        assert (signed.not_after - signed.not_before).total_seconds() == pytest.approx(620, abs=2)
        bundle = await anext(aiter(signer.watch_trust_bundle()))
        openssl_verify(tmp_path, bundle.roots_pem, signed.chain_pem)
        status = plane.certificates.status_json() if plane.certificates else {}
        (record,) = status["recently_signed"]  # type: ignore[misc]
        assert record["identity"] == WEB.spiffe_id and record["node_id"] == "web-0"


async def test_the_istio_wire_answer_puts_the_root_last(folder: Path) -> None:
    async with (
        running(folder) as plane,
        grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel,
    ):
        create = channel.unary_unary(
            wire.CREATE_CERTIFICATE_METHOD,
            request_serializer=wire.IstioCertificateRequest.SerializeToString,
            response_deserializer=wire.IstioCertificateResponse.FromString,
        )
        request = wire.IstioCertificateRequest(csr=new_key_and_csr(WEB)[1], validity_duration=60)
        token = plane.ca_credential(WEB)
        response = await create(request, metadata=(("authorization", f"Bearer {token}"),))
        assert plane.certificates is not None
        assert list(response.cert_chain)[-1] == plane.certificates.trust_bundle().roots_pem[0]
        assert len(response.cert_chain) == 2


async def test_the_bundle_stream_pushes_both_roots_on_rotation_then_drops_the_old(
    folder: Path,
) -> None:
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        admin, admin_port = await start_admin_server(plane)
        try:
            await signer.sign(new_key_and_csr(WEB)[1], 3600)
            bundles = signer.watch_trust_bundle()
            first = await asyncio.wait_for(anext(bundles), 10)
            assert first.issuer_epoch == 1 and len(first.roots_pem) == 1
            rotate = f"http://127.0.0.1:{admin_port}/api/ca/rotate"
            async with ClientSession(headers={"X-Pilotfish-Admin": "1"}) as http:
                # What a cross-site form can send: no custom header, a simple content type.
                async with ClientSession() as browser:
                    async with browser.post(
                        rotate, data="x=1", headers={"Content-Type": "text/plain"}
                    ) as response:
                        assert response.status == 403
                        assert "X-Pilotfish-Admin: 1" in (await response.json())["error"]
                    async with browser.options(
                        rotate,
                        headers={
                            "Origin": "http://evil.example",
                            "Access-Control-Request-Method": "POST",
                            "Access-Control-Request-Headers": "x-pilotfish-admin",
                        },
                    ) as response:
                        assert "Access-Control-Allow-Origin" not in response.headers
                assert plane.certificates is not None
                assert plane.certificates.rotation.issuer_epoch == 1
                async with http.post(rotate) as response:
                    assert response.status == 200
                async with http.post(rotate) as response:
                    assert response.status == 409  # one rotation at a time
                during = await asyncio.wait_for(anext(bundles), 10)
                assert during.issuer_epoch == 2
                assert during.roots_pem[1] == first.roots_pem[0] and len(during.roots_pem) == 2
                async with http.get(f"http://127.0.0.1:{admin_port}/api/ca") as response:
                    status = await response.json()
                assert status["rotation"]["phase"] == "overlap"
                assert status["rotation"]["waiting_for"] == [f"web-0 ({WEB})"]
            reissued = await signer.sign(new_key_and_csr(WEB)[1], 3600)
            assert reissued.issuer_epoch == 2
            after = await asyncio.wait_for(anext(bundles), 10)
            assert after.roots_pem == during.roots_pem[:1] and after.issuer_epoch == 2
            await bundles.aclose()  # type: ignore[attr-defined]
        finally:
            await admin.cleanup()


async def test_a_restarted_control_plane_keeps_its_root(folder: Path, tmp_path: Path) -> None:
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        before = await anext(aiter(signer.watch_trust_bundle()))
        signed = await signer.sign(new_key_and_csr(WEB)[1], 3600)
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        after = await anext(aiter(signer.watch_trust_bundle()))
        assert after == before
        openssl_verify(tmp_path, after.roots_pem, signed.chain_pem)
        assert (await signer.sign(new_key_and_csr(WEB)[1], 60)).issuer_epoch == 1


async def test_a_ca_that_sends_no_epoch_gives_certificates_of_unknown_epoch() -> None:
    """istiod's CreateCertificate has no epoch trailer: unknown, not epoch 0."""
    authority = new_self_signed_root("example.org", 3600, dt.datetime.now(dt.UTC))

    async def create(request: Any, context: grpc.aio.ServicerContext) -> Any:
        signed = authority.sign(request.csr, WEB, 600, dt.datetime.now(dt.UTC))
        return wire.IstioCertificateResponse(
            cert_chain=[*signed.chain_pem, certificate_pem(authority.root)]
        )

    service, method = wire.CREATE_CERTIFICATE_METHOD.strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service,
                {
                    method: grpc.unary_unary_rpc_method_handler(
                        create,
                        request_deserializer=wire.IstioCertificateRequest.FromString,
                        response_serializer=wire.IstioCertificateResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    signer = GrpcCertificateSigner(f"127.0.0.1:{port}", "any-token")
    try:
        signed = await signer.sign(new_key_and_csr(WEB)[1], 600)
        assert len(signed.chain_pem) == 1
        assert signed.issuer_epoch is None
    finally:
        await signer.close()
        await server.stop(0)


async def test_an_unexpected_failure_to_sign_is_internal_and_logged_with_its_traceback(
    folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the signing key is on vacation")

    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        monkeypatch.setattr(plane.certificates, "sign", broken)
        with (
            caplog.at_level(logging.ERROR, "pilotfish.ca"),
            pytest.raises(
                CertificateAuthorityUnavailable,
                match=r"^INTERNAL: the CA failed to sign \(RuntimeError: the signing key is on",
            ),
        ):
            await signer.sign(new_key_and_csr(WEB)[1], 60)
        assert "could not sign a certificate for peer ipv4:127.0.0.1:" in caplog.text
        assert "Traceback" in caplog.text and "on vacation" in caplog.text


async def test_an_unreachable_ca_is_a_connection_error() -> None:
    signer = GrpcCertificateSigner(f"127.0.0.1:{free_port()}", "pf1.a.b", timeout=2)
    with pytest.raises(CertificateAuthorityUnavailable) as caught:
        await signer.sign(new_key_and_csr(WEB)[1], 60)
    assert isinstance(caught.value, ConnectionError)
    await signer.close()


async def test_ca_status_and_rotate_from_the_command_line(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(folder) as plane:
        admin, admin_port = await start_admin_server(plane)
        url = f"http://127.0.0.1:{admin_port}"
        try:
            assert await asyncio.to_thread(main, ["ca", "status", str(folder), "--admin", url]) == 0
            assert (
                "trust domain example.org, self-signed CA, issuer epoch 1"
                in capsys.readouterr().out
            )
            assert await asyncio.to_thread(main, ["ca", "rotate", str(folder), "--admin", url]) == 0
            assert "root rotation started: issuer epoch 2" in capsys.readouterr().out
        finally:
            await admin.cleanup()
    # Nothing runs now: the files tell.
    assert main(["ca", "status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "(no running mesh: read from" in out and "issuer epoch 2" in out


async def test_a_control_plane_restarted_mid_rotation_trusts_both_roots_until_agents_re_issue(
    folder: Path,
) -> None:
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        await signer.sign(new_key_and_csr(WEB)[1], 3600)
        assert plane.certificates is not None
        plane.certificates.rotate()
        during = await anext(aiter(signer.watch_trust_bundle()))
    async with running(folder) as plane, signer_for(plane, WEB) as signer:
        bundles = signer.watch_trust_bundle()
        assert await asyncio.wait_for(anext(bundles), 10) == during
        assert len(during.roots_pem) == 2 and during.issuer_epoch == 2
        assert (await signer.sign(new_key_and_csr(WEB)[1], 3600)).issuer_epoch == 2
        after = await asyncio.wait_for(anext(bundles), 10)
        assert after.roots_pem == during.roots_pem[:1]
        await bundles.aclose()  # type: ignore[attr-defined]
