"""Real Envoys running the config we generate, each with its certificates from its own small
SDS server on a Unix socket, standing in for the agent's, under the names and cluster the
generated config uses (``default``, ``ROOTCA``, ``sds-grpc``); and an app that echoes the
headers it received."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2
from test_translate_envoy_validate import ENVOY, static_bootstrap
from tests.waiting import wait_until

from pilotfish.model.identity import ROOT_CA_SECRET, SDS_CLUSTER_NAME, WORKLOAD_CERT_SECRET
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the app and the SDS stand-in ---------------------------------------------------------------


class _EchoHeaders(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a refused handshake is what some tests want: no traceback for it


@contextmanager
def echo_app(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """An HTTP app on a free port that answers every GET with the request's headers as JSON
    (over TLS with ``tls``, a server-side context)."""
    server = _QuietServer(("127.0.0.1", 0), _EchoHeaders)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _SecretServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Answers each stream's first request with the secrets it names; ACKs get nothing."""

    def __init__(self, secrets: Mapping[str, secret_pb2.Secret]) -> None:
        self._secrets = secrets

    def StreamSecrets(
        self,
        request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        for request in request_iterator:
            if request.response_nonce:
                continue
            resources = []
            for name in request.resource_names:
                packed = any_pb2.Any()
                packed.Pack(self._secrets[name])
                resources.append(packed)
            yield discovery_pb2.DiscoveryResponse(
                version_info="1", type_url=SECRET_TYPE, resources=resources, nonce="1"
            )


@dataclass(frozen=True)
class Credentials:
    """What one Envoy's agent would hold: its certificate and key, and the roots it trusts."""

    cert_pem: bytes
    key_pem: bytes
    roots_pem: bytes

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        return {
            WORKLOAD_CERT_SECRET: secret_pb2.Secret(
                name=WORKLOAD_CERT_SECRET,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=self.cert_pem),
                    private_key=base_pb2.DataSource(inline_bytes=self.key_pem),
                ),
            ),
            ROOT_CA_SECRET: secret_pb2.Secret(
                name=ROOT_CA_SECRET,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=self.roots_pem)
                ),
            ),
        }


@contextmanager
def sds_server(socket_path: str, credentials: Credentials) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(
        _SecretServer(credentials.secrets()), server
    )
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None).wait(timeout=5)


# --- Envoys running the translation -------------------------------------------------------------


@dataclass(frozen=True)
class RunningEnvoy:
    admin: str

    def stat(self, name: str) -> int:
        pattern = urllib.parse.quote(f"^{re.escape(name)}$")
        with NO_PROXY.open(f"{self.admin}/stats?filter={pattern}&format=json", timeout=5) as r:
            stats = json.loads(r.read())["stats"]
        return sum(int(s.get("value", 0)) for s in stats if s.get("name") == name)


def _sds_cluster(socket_path: str) -> dict[str, object]:
    return {
        "name": SDS_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER_NAME,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}
            ],
        },
    }


def envoy_command(config: Path, admin_address: Path, log: Path, level: str) -> list[str]:
    """One Envoy on one worker thread, hot restart off, its admin address written to a file."""
    return [
        str(ENVOY),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--admin-address-path",
        str(admin_address),
        "-l",
        level,
        "--log-path",
        str(log),
    ]


@contextmanager
def envoy(view: MeshView, node: ProxyNode, credentials: Credentials) -> Iterator[RunningEnvoy]:
    """``node``'s generated resources in a real Envoy, its secrets from its own SDS server."""
    with tempfile.TemporaryDirectory(prefix="pf-mtls-", dir="/tmp") as folder:
        # Short: a Unix socket path must fit in 108 bytes.
        socket_path = f"{folder}/sds.sock"
        config = static_bootstrap(MeshTranslator(view).resources_for(node))
        static = config["static_resources"]
        assert isinstance(static, dict)
        static["clusters"].append(_sds_cluster(socket_path))
        config["node"] = {"id": node.id, "cluster": "test"}
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        config_path = Path(folder) / "envoy.json"
        config_path.write_text(json.dumps(config))
        admin_path = Path(folder) / "admin"
        command = envoy_command(config_path, admin_path, Path(folder) / "envoy.log", "warning")
        with sds_server(socket_path, credentials):
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_until(lambda: admin_path.exists() and admin_path.read_text(), 30, "admin")
                running = RunningEnvoy("http://" + admin_path.read_text().strip())
                # Ready only once every listener's secrets arrived over SDS.
                wait_until(lambda: _status(running.admin + "/ready") == 200, 30, "Envoy ready")
                yield running
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _status(url: str, headers: Mapping[str, str] | None = None) -> int:
    try:
        with NO_PROXY.open(
            urllib.request.Request(url, headers=dict(headers or {})), timeout=5
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return error.code


def get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}
