"""The cost floor of any Envoy mesh: two hand-written Envoys with a static bootstrap, no xDS.

client Envoy (listener -> HTTP connection manager -> router -> one static cluster) -> server
Envoy (listener -> HTTP connection manager -> router -> nginx). With ``tls=True`` the hop
between them is mutual TLS as a mesh does it: EC P-256 certificates from a throwaway CA made
here, the client checks the server's SPIFFE URI SAN, the server requires a client certificate,
certificates come from files named in the bootstrap, TLS versions are Envoy's defaults (at least
1.2; a client offers at most 1.2, a server accepts 1.3).

ALPN: the server offers h2 and http/1.1, as the mesh's inbound side does. The client offers only
http/1.1, the protocol its cluster speaks (the mesh's client side does the same for an HTTP/1.1
service): a client that offered h2 as well would have the server choose h2 and then every
request would fail (measured: ``downstream_cx_protocol_error`` on the server), unless the
cluster spoke whatever ALPN chose, which would make this hop HTTP/2 and the plaintext one
HTTP/1.1, and the two rows would no longer differ by TLS alone.

Both Envoys are run exactly as the agent runs a sidecar (same binary, same flags, including
``--concurrency``), so that the only difference from ``pilotfish up``'s pair is the config.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_report import command_line, die_with_parent, kill_leftovers

from pilotfish.agent.envoy_process import EnvoyOptions, envoy_argv, find_envoy_binary
from pilotfish.agent.ports import free_port

SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/default"
SERVER_ALPN = ["h2", "http/1.1"]
CLIENT_ALPN = ["http/1.1"]
_TLS_SOCKET = "envoy.transport_sockets.tls"
_TYPES = "type.googleapis.com/envoy.extensions"


@dataclass(frozen=True)
class PeerFiles:
    """One side's certificate chain and key, and the root it trusts (PEM files)."""

    certificate: Path
    key: Path
    trusted_ca: Path


@dataclass(frozen=True)
class PairCertificates:
    client: PeerFiles
    server: PeerFiles


def make_certificates(directory: Path) -> PairCertificates:
    """A throwaway CA and one leaf each for client and server, both carrying ``SPIFFE_ID``
    (the tests' certificate maker: EC P-256, an hour's lifetime, longer than any run)."""
    from tests.certificates import CertificateAuthority

    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority("pilotfish benchmark CA")
    root = directory / "root.pem"
    root.write_bytes(ca.cert_pem)

    def peer(name: str) -> PeerFiles:
        certificate, key = ca.issue(uri=SPIFFE_ID).write(directory, name)
        key.chmod(0o600)
        return PeerFiles(certificate, key, root)

    return PairCertificates(client=peer("client"), server=peer("server"))


# --- bootstraps ---------------------------------------------------------------------------


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _http_connection_manager(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def common_tls_context(peer: PeerFiles, alpn: list[str], verify_san: str | None) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(peer.trusted_ca)}}
    if verify_san is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": verify_san}}
        ]
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(peer.certificate)},
                "private_key": {"filename": str(peer.key)},
            }
        ],
        "validation_context": validation,
        "alpn_protocols": alpn,
        # As the mesh (and Istio) set it: an Envoy client offers at most TLS 1.2 otherwise.
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_2",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
    }


def _cluster(name: str, port: int, transport_socket: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def _bootstrap(listener: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"address": _address(0)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def client_bootstrap(
    listen_port: int, server_port: int, certificates: PeerFiles | None
) -> dict[str, Any]:
    transport = None
    if certificates is not None:
        transport = {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls_context(
                    certificates, CLIENT_ALPN, verify_san=SPIFFE_ID
                ),
            },
        }
    listener = {
        "name": "outbound",
        "address": _address(listen_port),
        "filter_chains": [{"filters": [_http_connection_manager("outbound", "server")]}],
    }
    return _bootstrap(listener, _cluster("server", server_port, transport))


def server_bootstrap(
    listen_port: int, backend_port: int, certificates: PeerFiles | None
) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [_http_connection_manager("inbound", "backend")]}
    if certificates is not None:
        chain["transport_socket"] = {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": common_tls_context(
                    certificates, SERVER_ALPN, verify_san=None
                ),
                "require_client_certificate": True,
            },
        }
    listener = {"name": "inbound", "address": _address(listen_port), "filter_chains": [chain]}
    return _bootstrap(listener, _cluster("backend", backend_port, None))


# --- processes ----------------------------------------------------------------------------


class EnvoyRejected(RuntimeError):
    """``envoy --mode validate`` refused a bootstrap; the message quotes Envoy."""


def validate_bootstrap(binary: Path, path: Path) -> None:
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip()[-3000:]
        raise EnvoyRejected(f"Envoy rejects the static bootstrap {path}:\n{said}")


class StaticEnvoy:
    """One Envoy process on a static bootstrap, run with the agent's own command line."""

    def __init__(self, name: str, bootstrap: dict[str, Any], work: Path) -> None:
        self.name = name
        binary = find_envoy_binary()
        self.bootstrap_path = work / f"{name}.bootstrap.json"
        self.bootstrap_path.write_text(json.dumps(bootstrap, indent=2))
        validate_bootstrap(binary, self.bootstrap_path)
        self.log_path = work / f"{name}.log"
        self._log = self.log_path.open("wb")
        # The agent's flags and defaults (--concurrency above all), as `pilotfish up` runs them.
        argv = envoy_argv(binary, self.bootstrap_path, work / f"{name}.admin", EnvoyOptions())
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # a SIGKILLed benchmark must not leave Envoys running
        )
        self.argv = command_line(self.process.pid) or argv

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
        self._log.close()
        kill_leftovers({self.process.pid: self.argv})


class StaticPair:
    """A client and a server Envoy in front of ``backend_port``; send to ``port``."""

    def __init__(self, name: str, backend_port: int, work: Path, *, tls: bool) -> None:
        self.name = name
        directory = work / name
        directory.mkdir(parents=True)
        certificates = make_certificates(directory / "certs") if tls else None
        client_files = certificates.client if certificates else None
        server_files = certificates.server if certificates else None
        self.port = free_port()
        server_port = free_port()
        self.envoys: list[StaticEnvoy] = []
        try:
            self.server = StaticEnvoy(
                f"{name}-server",
                server_bootstrap(server_port, backend_port, server_files),
                directory,
            )
            self.envoys.append(self.server)
            self.client = StaticEnvoy(
                f"{name}-client", client_bootstrap(self.port, server_port, client_files), directory
            )
            self.envoys.append(self.client)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, int]:
        return {envoy.name: envoy.pid for envoy in self.envoys}

    def wait_ready(self, serves: Callable[[], bool], timeout: float = 30.0) -> None:
        """Until ``serves()`` (a request through both Envoys) is true; fail with their logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for envoy in self.envoys:
                if envoy.process.poll() is not None:
                    raise RuntimeError(f"{envoy.name} exited early:\n{envoy.log()}")
            if serves():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {envoy.name}\n{envoy.log()}" for envoy in self.envoys)
        raise RuntimeError(f"the {self.name} pair did not serve within {timeout:.0f}s:\n{logs}")

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
