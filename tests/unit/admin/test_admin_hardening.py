"""The admin server against browsers and Ctrl-C: the Host check and streams ending on
shutdown, on a real admin server on a loopback port and through aiohttp's test client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from tests.waiting import eventually

from pilotfish.admin.server import build_admin_app, start_admin_server
from pilotfish.controller.control_plane import ControlPlane


async def test_a_real_admin_server_with_an_open_tap_stops_promptly(tmp_path: Path) -> None:
    control_plane = ControlPlane(tmp_path)
    runner, port = await start_admin_server(control_plane)
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"http://127.0.0.1:{port}/api/tap")
        assert response.status == 200
        await eventually(
            lambda: control_plane.tap.subscribers, "the tap's subscription", timeout=10
        )
        # aiohttp's own shutdown would wait a minute for the stream; 20 s is plenty for
        # a stream that ends on shutdown.
        await asyncio.wait_for(runner.cleanup(), 20)
        assert not control_plane.tap.subscribers
        response.close()
    await control_plane.trace_export.stop()


async def test_a_request_naming_another_host_is_refused_saying_why(tmp_path: Path) -> None:
    control_plane = ControlPlane(tmp_path)
    async with TestClient(TestServer(build_admin_app(control_plane))) as client:
        port = client.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "pilotfish-telemetry"):
            response = await client.get("/api/proxies", headers={"Host": host})
            assert response.status == 200, host
        for host in (f"evil.example:{port}", "127.0.0.1:1", "localhost"):
            response = await client.get("/api/proxies", headers={"Host": host})
            assert response.status == 403, host
            assert "DNS rebinding" in (await response.json())["error"]
    await control_plane.trace_export.stop()


async def test_a_real_request_with_a_foreign_host_is_refused(tmp_path: Path) -> None:
    control_plane = ControlPlane(tmp_path)
    runner, port = await start_admin_server(control_plane)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/api/config"
            async with session.get(url, headers={"Host": f"rebound.example:{port}"}) as bad:
                assert bad.status == 403
                assert f"'rebound.example:{port}'" in (await bad.json())["error"]
            async with session.get(url) as good:
                assert good.status == 200
    finally:
        await runner.cleanup()
        await control_plane.trace_export.stop()
