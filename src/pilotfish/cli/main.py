"""`pilotfish`: validate, up, control-plane, agent, proxy-status, ca.

Settings are read here, once, and passed down as frozen dataclasses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pilotfish import __version__
from pilotfish.ca.store import CaStoreError
from pilotfish.model.diagnostics import ConfigError
from pilotfish.runner.netns import InterceptionError

if TYPE_CHECKING:
    from pilotfish.ca.store import StoredCa
    from pilotfish.model.resources import GatewayServer, MeshSettings

STATE_DIR = ".pilotfish"
ADMIN_URL_FILE = "admin.url"


def main(argv: Sequence[str] | None = None) -> int:
    # We fork children (Envoy, workloads) while gRPC threads run; gRPC's fork handlers are not
    # needed for that (children exec at once) and would log a line per fork.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="[pilotfish] %(levelname)s %(name)s: %(message)s",
    )
    # The config watcher's library says "N changes detected" at INFO on every save.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, logging.root.level))
    if args.command in ("validate", "up", "control-plane") and not args.directory.is_dir():
        print(f"{args.directory}: not a folder", file=sys.stderr)
        return 2
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{len(exc.diagnostics)} problem(s); nothing was started", file=sys.stderr)
        return 1
    except CaStoreError as exc:
        print(f"the CA cannot start: {exc}", file=sys.stderr)
        return 1
    except InterceptionError as exc:
        print(f"pilotfish up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pilotfish logs DIR | head`: the reader left, which is no error of ours. Point stdout
        # at /dev/null so that the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE, which is what shells expect of `| head`
    return code


def build_parser() -> argparse.ArgumentParser:
    from pilotfish.agent.cli import add_agent_arguments
    from pilotfish.cli.endpoint_commands import add_endpoint_commands
    from pilotfish.cli.telemetry_commands import add_telemetry_commands
    from pilotfish.cli.trace_commands import add_trace_commands

    parser = argparse.ArgumentParser(prog="pilotfish", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pilotfish {__version__}")
    levels = ["debug", "info", "warning", "error"]
    parser.add_argument("--log-level", default="info", choices=levels)
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a config folder and list every problem")
    validate.add_argument("directory", type=Path)
    validate.set_defaults(handler=run_validate)

    up = commands.add_parser("up", help="run a whole mesh from a config folder on this machine")
    up.add_argument("directory", type=Path)
    up.add_argument("--xds-port", type=int, default=0, help="0 (default) picks a free port")
    up.add_argument("--admin-port", type=int, default=0, help="0 (default) picks a free port")
    up.add_argument("--sotw", action="store_true", help="sidecars use state-of-the-world xDS")
    up.add_argument("--envoy-log-level", default="warning")
    up.set_defaults(handler=run_up)

    control = commands.add_parser(
        "control-plane", help="serve xDS for a config folder; proxies are started elsewhere"
    )
    control.add_argument("directory", type=Path)
    control.add_argument("--xds-port", type=int, default=0)
    control.add_argument("--admin-port", type=int, default=0)
    control.add_argument(
        "--ports-file", type=Path, help="write the bound ports here as JSON once serving"
    )
    control.set_defaults(handler=run_control_plane)

    agent = commands.add_parser("agent", help="run an Envoy sidecar fed by the control plane")
    add_agent_arguments(agent)
    agent.set_defaults(handler=run_agent_command)

    status = commands.add_parser("proxy-status", help="each proxy's config sync state")
    status.add_argument(
        "directory", type=Path, nargs="?", default=Path("."), help="the folder `up` runs"
    )
    status.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")
    status.set_defaults(handler=run_proxy_status)

    ca = commands.add_parser("ca", help="the mesh's certificate authority")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_status = ca_commands.add_parser(
        "status", help="roots, expiry warnings, rotation and recent certificates"
    )
    ca_rotate = ca_commands.add_parser(
        "rotate", help="rotate the root: trust both, re-issue every certificate, drop the old"
    )
    for sub, handler in ((ca_status, run_ca_status), (ca_rotate, run_ca_rotate)):
        sub.add_argument(
            "directory", type=Path, nargs="?", default=Path("."), help="the folder `up` runs"
        )
        sub.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")
        sub.set_defaults(handler=handler)
    ca_token = ca_commands.add_parser(
        "token",
        help="the credential with which `pilotfish agent --ca-token-file` proves one identity",
    )
    ca_token.add_argument("directory", type=Path, help="the folder the control plane serves")
    ca_token.add_argument("--namespace", default="default")
    ca_token.add_argument("--service-account", default="default")
    ca_token.set_defaults(handler=run_ca_token)
    add_endpoint_commands(commands)
    add_telemetry_commands(commands)
    add_trace_commands(commands)
    return parser


def run_validate(args: argparse.Namespace) -> int:
    from pilotfish.controller.control_plane import load_and_check
    from pilotfish.load import format_diagnostics

    result = load_and_check(args.directory)
    if result.diagnostics:
        print(format_diagnostics(result.diagnostics))
    if result.config is None:
        errors = sum(1 for d in result.diagnostics if d.severity == "error")
        print(f"{args.directory}: {errors} error(s)", file=sys.stderr)
        return 1
    print(f"{args.directory}: ok", file=sys.stderr)
    return 0


def run_agent_command(args: argparse.Namespace) -> int:
    from pilotfish.agent.cli import run_agent

    return asyncio.run(run_agent(args))


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, installed before anything starts: a signal that
    arrives while we are still starting must stop what started, not kill us half-way."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _unless_stopped(work: Coroutine[object, object, None], stop: asyncio.Event) -> bool:
    """Run ``work``; if ``stop`` is set first, cancel it. True when it finished."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()  # its error, if any, is ours
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _write_admin_url(directory: Path, port: int) -> Path:
    state = directory / STATE_DIR
    state.mkdir(exist_ok=True)
    path = state / ADMIN_URL_FILE
    path.write_text(f"http://127.0.0.1:{port}\n")
    return path


def run_up(args: argparse.Namespace) -> int:
    import dataclasses

    from pilotfish.admin.server import start_admin_server
    from pilotfish.controller.collector import pace_collector_for_control_plane
    from pilotfish.runner.local_mesh import LocalMesh, LocalMeshSettings

    pace_collector_for_control_plane()

    async def serve() -> int:
        mesh = LocalMesh(
            args.directory,
            LocalMeshSettings(
                xds_port=args.xds_port, delta=not args.sotw, envoy_log_level=args.envoy_log_level
            ),
        )
        stop = _stop_on_signals()
        try:
            also_on = await mesh.prepare()
            admin, admin_port = await start_admin_server(
                mesh.control_plane, port=args.admin_port, also_on=also_on
            )
        except BaseException:
            await mesh.stop()
            raise
        # Bound before any proxy starts, so that each one's bootstrap has it for its spans.
        mesh.settings = dataclasses.replace(mesh.settings, telemetry_port=admin_port)
        url_file = _write_admin_url(mesh.config_dir, admin_port)
        try:
            if await _unless_stopped(mesh.start(), stop):
                _announce_up(mesh, admin_port)
                await stop.wait()
            logging.getLogger("pilotfish").info("stopping every process started")
        finally:
            await mesh.stop()
            await admin.cleanup()
            url_file.unlink(missing_ok=True)
        return 0

    return asyncio.run(serve())


def _announce_up(mesh: object, admin_port: int) -> None:
    from pilotfish.runner.local_mesh import LocalMesh

    assert isinstance(mesh, LocalMesh)
    config = mesh.control_plane.controller.config
    admin = f"http://127.0.0.1:{admin_port}"
    lines = [
        f"pilotfish is up: dashboard {admin}/ (metrics {admin}/metrics, Zipkin API {admin}/api/v2)"
    ]
    for gateway in config.gateways if config else ():
        for server in gateway.servers:
            lines.append(f"  gateway {gateway.meta.name}: {gateway_server_address(server)}")
    lines.append("  Ctrl-C stops everything")
    print("\n".join(lines), flush=True)


def gateway_server_address(server: GatewayServer) -> str:
    """What a client of the server connects to: a URL for HTTP, the bare address for opaque
    TCP and TLS passed through (no URL scheme would be true of them)."""
    address = f"127.0.0.1:{server.port}"
    if server.passthrough or server.protocol == "TLS":
        return f"tls {address}"
    if server.protocol == "TCP":
        return f"tcp {address}"
    return f"{'https' if server.tls is not None else 'http'}://{address}/"


def run_control_plane(args: argparse.Namespace) -> int:
    import json

    from pilotfish.admin.server import start_admin_server
    from pilotfish.controller.collector import pace_collector_for_control_plane
    from pilotfish.controller.control_plane import ControlPlane, ControlPlaneSettings

    pace_collector_for_control_plane()

    async def serve() -> int:
        stop = _stop_on_signals()
        control_plane = ControlPlane(args.directory, ControlPlaneSettings(xds_port=args.xds_port))
        await control_plane.start()
        admin, admin_port = await start_admin_server(control_plane, port=args.admin_port)
        ports = {"xds": control_plane.xds_port, "admin": admin_port}
        if args.ports_file:
            temporary = args.ports_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(ports))
            temporary.replace(args.ports_file)  # readers never see a half-written file
        print(f"pilotfish control plane: xDS 127.0.0.1:{ports['xds']}, admin {ports['admin']}")
        try:
            await stop.wait()
        finally:
            await control_plane.stop()
            await admin.cleanup()
        return 0

    return asyncio.run(serve())


def _admin_url(args: argparse.Namespace) -> str | None:
    if args.admin:
        return str(args.admin)
    path = args.directory / STATE_DIR / ADMIN_URL_FILE
    return path.read_text().strip() if path.exists() else None


def run_proxy_status(args: argparse.Namespace) -> int:
    from pilotfish.admin.proxy_status import fetch_ejections, fetch_status, format_status

    url = _admin_url(args)
    if url is None:
        path = args.directory / STATE_DIR / ADMIN_URL_FILE
        print(f"no running mesh found ({path} is missing); pass --admin URL", file=sys.stderr)
        return 2
    try:
        proxies, config = fetch_status(url)
    except OSError as exc:
        print(f"cannot reach the admin API at {url}: {exc}", file=sys.stderr)
        return 2
    print(format_status(proxies, config, fetch_ejections(url)))
    return 0


def run_ca_status(args: argparse.Namespace) -> int:
    from pilotfish.admin.ca_status import fetch_ca_status, format_ca_status

    url = _admin_url(args)
    if url is not None:
        try:
            print(format_ca_status(fetch_ca_status(url)))
            return 0
        except OSError as exc:
            if args.admin:
                print(f"cannot reach the admin API at {url}: {exc}", file=sys.stderr)
                return 2
            # A stale admin.url from a mesh that did not stop cleanly: the files still tell.
    return _ca_status_from_files(args.directory)


def _stored_ca(directory: Path) -> tuple[MeshSettings, StoredCa | None]:
    """The folder's mesh settings and its CA's files as the last control plane left them."""
    from pilotfish.ca.store import ca_directory, read_ca
    from pilotfish.load import load_directory
    from pilotfish.model.resources import MeshSettings

    config = load_directory(directory).config
    mesh = config.mesh if config is not None else MeshSettings()
    return mesh, read_ca(ca_directory(directory), mesh.certificates)


def _ca_status_from_files(directory: Path) -> int:
    from pilotfish.admin.ca_status import format_ca_status
    from pilotfish.ca.store import ca_directory
    from pilotfish.controller.certificates import ca_status_json

    try:
        mesh, stored = _stored_ca(directory)
    except CaStoreError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if stored is None:
        print(f"no CA in {ca_directory(directory)} yet: `pilotfish up {directory}` makes one")
        return 1
    print(f"(no running mesh: read from {ca_directory(directory)})")
    print(format_ca_status(ca_status_json(stored, mesh)))
    return 0


def run_ca_token(args: argparse.Namespace) -> int:
    """Print the bearer token of one identity; whoever holds it can get certificates for it,
    so it goes only to that workload's agent (a file it alone can read)."""
    from pilotfish.ca.store import ca_directory
    from pilotfish.model.identity import Identity

    mesh, stored = _stored_ca(args.directory)
    if stored is None:
        print(
            f"no CA in {ca_directory(args.directory)} yet: start the control plane once "
            f"(`pilotfish control-plane {args.directory}` or `pilotfish up`) to make it",
            file=sys.stderr,
        )
        return 1
    identity = Identity(mesh.trust_domain, args.namespace, args.service_account)
    print(stored.credentials.token_for(identity))
    return 0


def run_ca_rotate(args: argparse.Namespace) -> int:
    from pilotfish.admin.ca_status import request_rotation

    url = _admin_url(args)
    if url is None:
        print(
            f"no running mesh found in {args.directory}: a root rotation re-issues every "
            "workload certificate, so it is done by the running control plane "
            "(start it with `pilotfish up`, or pass --admin URL)",
            file=sys.stderr,
        )
        return 2
    try:
        started, body = request_rotation(url)
    except OSError as exc:
        print(f"cannot reach the control plane at {url}: {exc}", file=sys.stderr)
        return 2
    if not started:
        print(f"not rotated: {body.get('error', body)}", file=sys.stderr)
        return 1
    rotation = body.get("rotation")
    rotation = rotation if isinstance(rotation, dict) else {}
    print(
        f"root rotation started: issuer epoch {rotation.get('issuer_epoch')}; both roots are "
        f"trusted until every agent re-issued (at the latest {rotation.get('drop_after')}); "
        "`pilotfish ca status` follows it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
