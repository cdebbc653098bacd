"""``GET /api/endpoints?service=HOST[&proxy=NODE]``: each endpoint of a service as each proxy
sees it (healthy, ejected since when and why, its requests), asked of the proxies' own Envoys.
``GET /api/ejections``: per proxy, how many endpoints (of every service) it has ejected, for
``pilotfish proxy-status``.

Every connected proxy whose metadata names its Envoy's admin (ADMIN_ADDRESS) is asked at
once, with a short timeout, for ``/clusters?format=json``; one that has clusters of the
service is listed with them, and the tail of its outlier event log (OUTLIER_LOG) says when
and why a host was ejected. A proxy that cannot be asked is listed with the reason, never
left out: it may be the one that sees the service differently. Only Envoys on loopback are
asked, and the log is read from this machine's file system: that is where ``pilotfish up``
runs every proxy. A proxy elsewhere names its own loopback, which the node id check of
``/server_info`` tells apart; a log that cannot be read leaves since and why null, saying why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from pilotfish.admin.endpoint_health import (
    OutlierEvent,
    ejected_count,
    latest_ejections,
    match_services,
    parse_outlier_log,
    proxy_endpoints_json,
    service_clusters,
)
from pilotfish.agent.admin_client import AdminError, EnvoyAdmin
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.proxy import ProxyNode

ADMIN_TIMEOUT_SECONDS = 1.0
# Each line is ~300 bytes: the last few hundred ejections of a proxy are more than enough to
# find each host's latest one.
LOG_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class _Asked:
    """What one proxy's Envoy answered, or why it could not be asked."""

    node: ProxyNode
    clusters: Mapping[str, object] | None
    error: str | None


def add_endpoint_routes(app: web.Application, control_plane: ControlPlane) -> None:
    async def endpoints(request: web.Request) -> web.Response:
        view = control_plane.controller.view
        query = request.query.get("service", "")
        if not query:
            return _error(400, "service: the name or hostname of a service is required")
        hostnames = list(view.services) if view is not None else []
        matches = match_services(query, hostnames)
        if not matches:
            known = ", ".join(sorted(hostnames)) or "none yet"
            return _error(404, f"service: no service {query!r}; the services are: {known}")
        if len(matches) > 1:
            return _error(400, f"service: {query!r} names {', '.join(matches)}: say which")
        hostname = matches[0]
        nodes = sorted(control_plane.nodes.connected_nodes(), key=lambda n: n.id)
        wanted = request.query.get("proxy") or None
        if wanted is not None:
            nodes = [n for n in nodes if n.id == wanted]
            if not nodes:
                listing = ", ".join(n.id for n in control_plane.nodes.connected_nodes())
                return _error(404, f"proxy: no connected proxy {wanted!r}; they are: {listing}")
        names = {
            _host_port(e.address, port): e.name
            for e in (view.endpoints_of(hostname) if view is not None else ())
            for port in e.ports.values()
            if e.name
        }
        proxies = await endpoints_seen_by(nodes, hostname, names, every=wanted is not None)
        return web.json_response({"service": hostname, "proxies": proxies})

    async def ejections(_: web.Request) -> web.Response:
        nodes = sorted(control_plane.nodes.connected_nodes(), key=lambda n: n.id)
        asked = await asyncio.gather(*(_ask(node) for node in nodes))
        counts = [
            {
                "proxy": one.node.id,
                "ejected": (
                    ejected_count(service_clusters(one.clusters, None))
                    if one.clusters is not None
                    else None
                ),
                "error": one.error,
            }
            for one in asked
        ]
        return web.json_response({"proxies": counts})

    app.router.add_get("/api/endpoints", endpoints)
    app.router.add_get("/api/ejections", ejections)


async def endpoints_seen_by(
    nodes: Sequence[ProxyNode], hostname: str, names: Mapping[str, str], *, every: bool = False
) -> list[dict[str, object]]:
    """The entry of each of ``nodes`` that sees ``hostname`` (with ``every``: of each one),
    and of each one that could not be asked; their Envoys are asked all at once."""
    asked = await asyncio.gather(*(_ask(node) for node in nodes))
    entries = await asyncio.gather(
        *(_proxy_json(one, hostname, names, every=every) for one in asked)
    )
    return [entry for entry in entries if entry is not None]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _ask(node: ProxyNode) -> _Asked:
    if node.admin_address is None:
        return _Asked(node, None, "its node metadata names no Envoy admin (ADMIN_ADDRESS)")
    host, _, port = node.admin_address.rpartition(":")
    host = host.strip("[]")
    if not _is_loopback(host) or not port.isdigit():
        return _Asked(
            node,
            None,
            f"not asked: its Envoy admin {node.admin_address} is not a loopback address, and "
            "the control plane asks only Envoys on its own machine",
        )
    admin = EnvoyAdmin(host, int(port), timeout=ADMIN_TIMEOUT_SECONDS)
    try:
        info, clusters = await asyncio.gather(
            admin.get("/server_info"), admin.get("/clusters?format=json")
        )
    except AdminError as exc:
        return _Asked(node, None, f"its Envoy admin did not answer: {exc}")
    try:
        if info.status != 200 or clusters.status != 200:
            status = clusters.status if info.status == 200 else info.status
            return _Asked(node, None, f"its Envoy admin answered HTTP {status}")
        answered_for = json.loads(info.body).get("node", {}).get("id")
        body = json.loads(clusters.body)
        if not isinstance(body, dict):
            raise ValueError(f"/clusters is a {type(body).__name__}, not an object")
    except (ValueError, AttributeError) as exc:
        return _Asked(node, None, f"its Envoy admin answered no JSON object: {exc}")
    if answered_for != node.id:
        # A port reused by another Envoy, or a proxy on another machine naming its own
        # loopback: either way this is not its view.
        return _Asked(
            node,
            None,
            f"the Envoy at {node.admin_address} is node {answered_for!r}, not this proxy "
            "(is the proxy on another machine?)",
        )
    return _Asked(node, body, None)


async def _proxy_json(
    asked: _Asked, hostname: str, names: Mapping[str, str], *, every: bool
) -> dict[str, object] | None:
    node = asked.node
    entry: dict[str, object] = {
        "proxy": node.id,
        "kind": node.kind,
        "admin": node.admin_address,
        "error": asked.error,
        "outlier_log": node.outlier_log,
        "outlier_log_error": None,
        "clusters": [],
    }
    if asked.clusters is None:
        return entry
    clusters = service_clusters(asked.clusters, hostname)
    if not clusters and not every:
        return None  # this proxy does not see the service at all
    events, log_error = await asyncio.to_thread(read_outlier_log, node.outlier_log)
    entry["outlier_log_error"] = log_error
    ejections = latest_ejections(events) if events is not None else None
    entry["clusters"] = proxy_endpoints_json(clusters, ejections, names)
    return entry


def read_outlier_log(path: str | None) -> tuple[list[OutlierEvent] | None, str | None]:
    """The events at the end of a proxy's outlier event log, or why it cannot be read."""
    if path is None:
        return None, "the proxy names no outlier event log (OUTLIER_LOG)"
    if not os.path.isabs(path):
        return None, f"{path}: not an absolute path"
    try:
        with open(path, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, size - LOG_TAIL_BYTES))
            tail = log_file.read()
    except OSError as exc:
        return None, (
            f"{path}: {exc.strerror or exc} (read from the control plane's own file system)"
        )
    return parse_outlier_log(tail.decode("utf-8", "replace")), None


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
