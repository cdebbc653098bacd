"""A small JSON API over the control plane's state, for `pilotfish proxy-status` and humans.

GET /healthz          200 once a config is applied
GET /api/proxies      every connected proxy, its versions per type, SYNCED/STALE/NACKED
GET /api/config       the config status: when applied or rejected, and every diagnostic
GET /api/services     the registry: services and their live endpoints
GET /api/endpoints?service=HOST[&proxy=NODE]
                      each endpoint of a service as each proxy's Envoy sees it: health,
                      ejected since when and why, active requests (endpoints_api.py)
GET /api/ejections    per proxy, how many endpoints its Envoy has ejected
GET /api/ca           the CA: roots, intermediates, issuer epoch, rotation, expiry warnings,
                      certificates signed recently
POST /api/ca/rotate   start a root rotation (409 when one runs or the CA is plugged in);
                      only with the header X-Pilotfish-Admin: 1 (403 otherwise), which no
                      cross-site form or fetch from a browser page can send

Every request must name the admin address in its Host header (403 otherwise): a web page
whose own name an attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name there.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from pilotfish.admin.ca_status import ADMIN_HEADER, ADMIN_HEADER_VALUE
from pilotfish.admin.dashboard import add_dashboard_routes
from pilotfish.admin.endpoints_api import add_endpoint_routes
from pilotfish.admin.telemetry_api import add_telemetry_routes
from pilotfish.admin.traces_api import add_trace_routes
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.errors import PilotfishError
from pilotfish.model.telemetry import TELEMETRY_CLUSTER

# Streams (tap, logs -f) end on shutdown by themselves; this bounds any other slow handler
# so that Ctrl-C on `pilotfish up` never waits aiohttp's default minute.
SHUTDOWN_TIMEOUT_SECONDS = 2.0


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers a request to the admin address at ``host``:``port`` may carry.
    Envoy posts its spans with the collector's cluster name as Host, a name no public DNS
    resolves."""
    loopback = {"127.0.0.1", "localhost", "[::1]"}
    bracketed = f"[{host}]" if ":" in host else host
    names = loopback | {bracketed}
    return frozenset({f"{name}:{port}" for name in names} | {TELEMETRY_CLUSTER})


@web.middleware
async def _check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname is None:  # not on a socket of ours: nothing to compare with
        return await handler(request)
    allowed = allowed_hosts(str(sockname[0]), int(sockname[1]))
    if request.host.lower() not in allowed:
        return web.json_response(
            {
                "error": f"Host {request.host!r} is not this admin server's address; it "
                f"answers only to {', '.join(sorted(allowed))}, so that a web page whose "
                "name was re-pointed at this machine (DNS rebinding) cannot read it"
            },
            status=403,
        )
    return await handler(request)


def build_admin_app(control_plane: ControlPlane) -> web.Application:
    controller = control_plane.controller

    async def healthz(_: web.Request) -> web.Response:
        ok = controller.config is not None
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "no config\n")

    async def proxies(_: web.Request) -> web.Response:
        listing = control_plane.board.to_json()
        certificates = control_plane.certificates
        latest = certificates.latest_by_node() if certificates else {}
        for entry in listing:
            record = latest.get(str(entry["node_id"]))
            entry["identity"] = record.identity if record else None
            entry["cert_not_after"] = record.not_after.isoformat() if record else None
        return web.json_response({"proxies": listing})

    async def ca(_: web.Request) -> web.Response:
        if control_plane.certificates is None:
            return web.json_response({"error": "the control plane is starting"}, status=503)
        return web.json_response(control_plane.certificates.status_json())

    async def ca_rotate(request: web.Request) -> web.Response:
        if request.headers.get(ADMIN_HEADER) != ADMIN_HEADER_VALUE:
            return web.json_response(
                {
                    "error": f"a rotation must be asked for with the header "
                    f"{ADMIN_HEADER}: {ADMIN_HEADER_VALUE} (as `pilotfish ca rotate` does), so "
                    "that no web page can start one from a browser"
                },
                status=403,
            )
        if control_plane.certificates is None:
            return web.json_response({"error": "the control plane is starting"}, status=503)
        try:
            state = await control_plane.certificates.rotate_in_worker()
        except PilotfishError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"rotation": state.to_json()})

    async def config(_: web.Request) -> web.Response:
        body = {"generation": controller.generation, **controller.status.to_json()}
        return web.json_response(body)

    async def cache(_: web.Request) -> web.Response:
        return web.json_response(controller.cache_stats().to_json())

    async def services(_: web.Request) -> web.Response:
        view = controller.view
        if view is None:
            return web.json_response({"services": []})
        listing = [
            {
                "hostname": service.hostname,
                "ports": [
                    {"number": p.number, "name": p.name, "protocol": p.protocol}
                    for p in service.ports
                ],
                "endpoints": [
                    {
                        "name": e.name,
                        "address": e.address,
                        "ports": {str(k): v for k, v in e.ports.items()},
                        "labels": dict(e.labels),
                    }
                    for e in view.endpoints_of(service.hostname)
                ],
            }
            for service in sorted(view.services.values(), key=lambda s: s.hostname)
        ]
        return web.json_response({"services": listing})

    app = web.Application(middlewares=[_check_host])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/proxies", proxies)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/services", services)
    app.router.add_get("/api/cache", cache)
    app.router.add_get("/api/ca", ca)
    app.router.add_post("/api/ca/rotate", ca_rotate)
    add_endpoint_routes(app, control_plane)
    add_telemetry_routes(app, control_plane)
    add_trace_routes(app, control_plane)
    add_dashboard_routes(app, control_plane)
    return app


async def start_admin_server(
    control_plane: ControlPlane,
    host: str = "127.0.0.1",
    port: int = 0,
    also_on: Sequence[str] = (),
) -> tuple[web.AppRunner, int]:
    """Serve the API; binding the socket ourselves is how we learn the port the OS picked.

    ``also_on``: more hosts served on the same port (where proxies in network namespaces
    send their spans)."""
    sock = _bound_socket(host, port)
    bound = int(sock.getsockname()[1])
    sockets = [sock, *(_bound_socket(other, bound) for other in also_on)]
    runner = web.AppRunner(
        build_admin_app(control_plane),
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
    )
    await runner.setup()
    for each in sockets:
        await web.SockSite(runner, each).start()
    return runner, bound


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
