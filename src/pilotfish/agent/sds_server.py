"""The agent's SDS server: hands its own Envoy the workload certificate and the trust bundle.

gRPC (``envoy.service.secret.v3.SecretDiscoveryService``, state of the world) on a Unix socket
in a directory only this user can enter. Two secrets exist, named as istio-agent names them:
``WORKLOAD_CERT_SECRET`` (chain and private key) and ``ROOT_CA_SECRET`` (every root of the
bundle). Envoy opens one stream per secret it needs.

A secret that is not there yet is not answered at all: Envoy keeps the listener or cluster
that needs it warming, so nothing ever falls back to plaintext. Each change is pushed to every
open stream at once; an ACK or NACK never causes a resend of the same content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from pilotfish.agent.workload_certificate import WorkloadCertificate
from pilotfish.ca.api import TrustBundle
from pilotfish.errors import PilotfishError
from pilotfish.model.identity import ROOT_CA_SECRET, WORKLOAD_CERT_SECRET

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
KNOWN_SECRETS = (WORKLOAD_CERT_SECRET, ROOT_CA_SECRET)
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107

Secrets = Mapping[str, secret_pb2.Secret]
# What a stream's loop is fed: a request, or news that the secrets changed or the peer left.
_Event: TypeAlias = "discovery_pb2.DiscoveryRequest | Literal['changed', 'ended']"


class SecretSource(Protocol):
    """What the server serves; ``WorkloadCertificates`` is the real one."""

    @property
    def certificate(self) -> WorkloadCertificate | None: ...
    @property
    def trust_bundle(self) -> TrustBundle | None: ...
    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]: ...


def secrets_to_proto(
    certificate: WorkloadCertificate | None, bundle: TrustBundle | None
) -> dict[str, secret_pb2.Secret]:
    """The secrets that exist now: none, one or both of ``KNOWN_SECRETS``."""
    secrets: dict[str, secret_pb2.Secret] = {}
    if certificate is not None:
        secrets[WORKLOAD_CERT_SECRET] = secret_pb2.Secret(
            name=WORKLOAD_CERT_SECRET,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string="".join(certificate.chain_pem)),
                private_key=base_pb2.DataSource(inline_string=certificate.key_pem),
            ),
        )
    if bundle is not None and bundle.roots_pem:
        secrets[ROOT_CA_SECRET] = secret_pb2.Secret(
            name=ROOT_CA_SECRET,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string="".join(bundle.roots_pem))
            ),
        )
    return secrets


def _version(selected: list[secret_pb2.Secret]) -> str:
    digest = hashlib.sha256()
    for secret in selected:
        digest.update(secret.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


class SdsStream:
    """One StreamSecrets stream, without I/O: requests and changes in, responses out.

    The version of a response is a hash of the secrets it carries, so a change that does not
    touch this stream's secrets (a new bundle, for the certificate's stream) sends nothing.
    """

    def __init__(self, peer: str = "envoy") -> None:
        self.peer = peer
        self.names: tuple[str, ...] = ()
        self.sent_version: str | None = None
        self.acked_version: str | None = None
        self.nack_message: str | None = None
        self._latest_nonce: str | None = None
        self._nonces = itertools.count(1)
        self._unknown_logged: set[str] = set()

    def request(
        self, request: discovery_pb2.DiscoveryRequest, secrets: Secrets
    ) -> discovery_pb2.DiscoveryResponse | None:
        if request.type_url != SECRET_TYPE:
            log.warning(
                "SDS: %s asked for type %r; only secrets are served", self.peer, request.type_url
            )
            return None
        answered = request.response_nonce
        if answered and self._latest_nonce is not None and answered != self._latest_nonce:
            return None  # stale: Envoy will answer our latest response as well
        self.names = tuple(request.resource_names)
        unknown = [
            n for n in self.names if n not in KNOWN_SECRETS and n not in self._unknown_logged
        ]
        if unknown:
            self._unknown_logged.update(unknown)
            log.warning(
                "SDS: %s asked for unknown secret(s) %s; only %s exist",
                self.peer,
                ", ".join(unknown),
                " and ".join(KNOWN_SECRETS),
            )
        if answered and self._latest_nonce is not None:
            if request.HasField("error_detail"):
                self.nack_message = request.error_detail.message
                log.warning(
                    "SDS: %s rejected secrets %s version %s: %s",
                    self.peer,
                    ", ".join(self.names),
                    self.sent_version,
                    self.nack_message,
                )
                return None
            self.acked_version = request.version_info
            self.nack_message = None
            return self.changed(secrets)  # the names may have changed
        # A first request (or one from before a reconnect): always answered when we can, as
        # the proxy's version may come from an earlier run of this server.
        self.sent_version = None
        return self.changed(secrets)

    def changed(self, secrets: Secrets) -> discovery_pb2.DiscoveryResponse | None:
        # An empty list is the legacy wildcard; Envoy never sends it for SDS, grpc tools may.
        wanted = self.names or KNOWN_SECRETS
        selected = [secrets[n] for n in wanted if n in secrets]
        if not selected:
            return None  # nothing yet: Envoy keeps waiting, no plaintext fallback
        version = _version(selected)
        if version == self.sent_version:
            return None
        self.sent_version = version
        self._latest_nonce = str(next(self._nonces))
        resources = []
        for secret in selected:
            packed = any_pb2.Any()
            packed.Pack(secret)
            resources.append(packed)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=resources,
            type_url=SECRET_TYPE,
            nonce=self._latest_nonce,
        )


class SecretDiscoveryServicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, source: SecretSource) -> None:
        self._source = source
        self._secrets: Secrets = secrets_to_proto(source.certificate, source.trust_bundle)
        self._streams: set[asyncio.Queue[_Event]] = set()
        self._unsubscribe = source.subscribe(self._source_changed)
        self.streams_opened = 0

    def close(self) -> None:
        self._unsubscribe()

    def _source_changed(self) -> None:
        self._secrets = secrets_to_proto(self._source.certificate, self._source.trust_bundle)
        for queue in self._streams:
            queue.put_nowait("changed")

    async def StreamSecrets(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # Requests and changes feed one queue, so the stream's state sees one event at a time.
        events: asyncio.Queue[_Event] = asyncio.Queue()
        stream = SdsStream()
        self._streams.add(events)
        self.streams_opened += 1
        reader = asyncio.create_task(self._read(requests, events))
        try:
            while True:
                event = await events.get()
                if event == "ended":
                    return
                if event == "changed":
                    response = stream.changed(self._secrets)
                else:
                    assert not isinstance(event, str)
                    if event.HasField("node") and event.node.id:
                        stream.peer = event.node.id
                    response = stream.request(event, self._secrets)
                if response is not None:
                    await context.write(response)
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            log.info("SDS stream of %s ended: %r", stream.peer, exc)
        finally:
            self._streams.discard(events)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @staticmethod
    async def _read(
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        events: asyncio.Queue[_Event],
    ) -> None:
        try:
            async for request in requests:
                events.put_nowait(request)
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass
        finally:
            events.put_nowait("ended")

    async def DeltaSecrets(
        self, requests: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this SDS server speaks state of the world"
        )

    async def FetchSecrets(
        self, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this SDS server streams (StreamSecrets)"
        )


class SdsServerError(PilotfishError):
    """The SDS socket could not be made."""


class SdsServer:
    """A running SDS server; ``stop()`` closes it and removes its socket."""

    def __init__(
        self, server: grpc.aio.Server, servicer: SecretDiscoveryServicer, socket_path: Path
    ) -> None:
        self.socket_path = socket_path
        self.servicer = servicer
        self._server = server

    async def stop(self, grace: float | None = None) -> None:
        self.servicer.close()
        await self._server.stop(grace)
        self.socket_path.unlink(missing_ok=True)


async def start_sds_server(source: SecretSource, socket_path: Path) -> SdsServer:
    """Serve ``source`` on ``socket_path``, whose directory is made (or narrowed) to 0700."""
    socket_path = socket_path.absolute()
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise SdsServerError(
            f"SDS socket path {socket_path} is longer than the {_MAX_SOCKET_PATH} bytes a Unix "
            "socket allows: use a shorter work dir"
        )
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    # Whoever can connect gets the private key: only this user may enter the directory.
    socket_path.parent.chmod(0o700)
    socket_path.unlink(missing_ok=True)  # left over from an agent that was killed
    servicer = SecretDiscoveryServicer(source)
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"unix:{socket_path}") == 0:
        servicer.close()
        raise SdsServerError(f"cannot bind the SDS server to {socket_path}")
    await server.start()
    socket_path.chmod(0o600)
    log.info("SDS server on %s", socket_path)
    return SdsServer(server, servicer, socket_path)
