"""What the endpoints API says of an ADMIN_ADDRESS that is not this proxy's Envoy, against
real loopback servers: one text whatever answered there, so that a proxy cannot use the
control plane as a port scanner, and no answer is read past the size limit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable

import pytest

from pilotfish.admin import endpoints_api
from pilotfish.admin.endpoints_api import endpoints_seen_by
from pilotfish.agent.ports import free_port
from pilotfish.model.proxy import ProxyNode

HOSTNAME = "backend.default.svc.cluster.local"
NODE = "caller-0"

# path -> (status, body) of what a listener answers
Answers = Callable[[str], tuple[int, bytes]]


def _envoy_of(node_id: str, padding: int = 0) -> Answers:
    def answer(path: str) -> tuple[int, bytes]:
        if path == "/server_info":
            return 200, json.dumps({"node": {"id": node_id}}).encode()
        return 200, json.dumps({"cluster_statuses": [], "padding": "x" * padding}).encode()

    return answer


async def _serve(
    answers: Answers, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status, body = answers(head.split(b" ", 2)[1].decode())
    writer.write(b"HTTP/1.1 %d X\r\nConnection: close\r\n\r\n%s" % (status, body))
    # The client stops reading past its limit.
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


@pytest.fixture
async def listeners() -> AsyncIterator[dict[str, str]]:
    """Name -> loopback host:port of a listener answering as that name says."""
    kinds: dict[str, Answers] = {
        "envoy": _envoy_of(NODE),
        "another-node": _envoy_of("impostor-0"),
        "not-found": lambda _: (404, b"no such page"),
        "not-json": lambda _: (200, b"<html>hello</html>"),
        "huge": _envoy_of(NODE, padding=256 * 1024),
    }
    servers: list[asyncio.Server] = []
    addresses = {"closed": f"127.0.0.1:{free_port()}"}
    for name, answers in kinds.items():
        server = await asyncio.start_server(functools.partial(_serve, answers), "127.0.0.1", 0)
        servers.append(server)
        addresses[name] = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield addresses
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_every_admin_that_is_not_the_proxys_envoy_reads_the_same(
    listeners: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints_api, "ADMIN_RESPONSE_BYTES", 64 * 1024)
    nodes = [
        ProxyNode(id=NODE, admin_address=address, outlier_log=f"/nowhere/{name}")
        for name, address in listeners.items()
    ]
    entries = await endpoints_seen_by(nodes, HOSTNAME, {}, every=True)
    errors = {
        str(entry["outlier_log"]).removeprefix("/nowhere/"): entry["error"] for entry in entries
    }
    assert errors.pop("envoy") is None  # the one real answer
    assert len(errors) == 5
    for name, error in errors.items():
        assert error == (
            f"its Envoy admin {listeners[name]} did not answer as this proxy's Envoy "
            "(nothing listens there, it is no Envoy, or the Envoy of another node: is the "
            "proxy on another machine?)"
        ), name
