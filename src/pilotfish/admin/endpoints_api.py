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
``/server_info`` tells apart; a log that cannot be read leaves since and why null, saying so.
Both the admin address and the log path are the proxy's word: answers are read up to a cap,
only a regular file is read, and each kind of failure has one text whatever its cause, so
that a proxy cannot use the control plane to probe this machine's ports or files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from pilotfish.admin.endpoint_health import (
    OutlierEvent,
    QueryProblem,
    ejected_count,
    latest_ejections,
    parse_outlier_log,
    proxy_endpoints_json,
    resolve_endpoints_query,
    service_clusters,
)
from pilotfish.agent.admin_client import AdminError, EnvoyAdmin
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.addresses import is_loopback
from pilotfish.model.proxy import ProxyNode

log = logging.getLogger("pilotfish.admin")

ADMIN_TIMEOUT_SECONDS = 1.0
# /clusters?format=json is ~1 KiB a host: room for thousands of endpoints. An ADMIN_ADDRESS
# is the proxy's word, so whatever listens there must not make us read more.
ADMIN_RESPONSE_BYTES = 8 * 1024 * 1024
# Each line is ~300 bytes: the last few hundred ejections of a proxy are more than enough to
# find each host's latest one.
LOG_TAIL_BYTES = 256 * 1024
# One text for every way the read fails (see read_outlier_log).
LOG_NOT_READABLE = "log not readable from the control plane"


@dataclass(frozen=True)
class _Asked:
    """What one proxy's Envoy answered, or why it could not be asked."""

    node: ProxyNode
    clusters: Mapping[str, object] | None
    error: str | None


def add_endpoint_routes(app: web.Application, control_plane: ControlPlane) -> None:
    async def endpoints(request: web.Request) -> web.Response:
        query = resolve_endpoints_query(
            request.query.get("service", ""),
            request.query.get("proxy") or None,
            control_plane.controller.view,
            control_plane.nodes.connected_nodes(),
        )
        if isinstance(query, QueryProblem):
            return _error(query.status, query.message)
        proxies = await endpoints_seen_by(
            query.nodes, query.hostname, query.names, every=query.every
        )
        return web.json_response({"service": query.hostname, "proxies": proxies})

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
    if not is_loopback(host) or not port.isdigit():
        return _Asked(
            node,
            None,
            f"not asked: its Envoy admin {node.admin_address} is not a loopback address, and "
            "the control plane asks only Envoys on its own machine",
        )
    admin = EnvoyAdmin(
        host, int(port), timeout=ADMIN_TIMEOUT_SECONDS, max_response_bytes=ADMIN_RESPONSE_BYTES
    )
    try:
        clusters = await _clusters_of(admin, node.id)
    except AdminError as exc:
        # The proxy hears one text whatever listens there (else the control plane would be
        # its port scanner); the cause goes to our own log.
        log.info("endpoints: proxy %s: %s", node.id, exc)
        return _Asked(
            node,
            None,
            f"its Envoy admin {node.admin_address} did not answer as this proxy's Envoy "
            "(nothing listens there, it is no Envoy, or the Envoy of another node: is the "
            "proxy on another machine?)",
        )
    return _Asked(node, clusters, None)


async def _clusters_of(admin: EnvoyAdmin, node_id: str) -> Mapping[str, object]:
    """``/clusters`` of the Envoy behind ``admin``, if it is the Envoy of ``node_id``."""
    info, clusters = await asyncio.gather(
        admin.get("/server_info"), admin.get("/clusters?format=json")
    )
    if info.status != 200 or clusters.status != 200:
        status = clusters.status if info.status == 200 else info.status
        raise AdminError(f"{admin.url} answered HTTP {status}")
    try:
        answered_for = json.loads(info.body).get("node", {}).get("id")
        body = json.loads(clusters.body)
        if not isinstance(body, dict):
            raise ValueError(f"/clusters is a {type(body).__name__}, not an object")
    except (ValueError, AttributeError) as exc:
        raise AdminError(f"{admin.url} answered no JSON object: {exc}") from exc
    if answered_for != node_id:
        # A port reused by another Envoy, or a proxy on another machine naming its own
        # loopback: either way this is not its view.
        raise AdminError(f"{admin.url} is the Envoy of node {answered_for!r}")
    return body


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
    """The events at the end of a proxy's outlier event log, or why it cannot be read.

    The path is the proxy's word (its metadata), so only a regular file, not through a link,
    is read, at most its last ``LOG_TAIL_BYTES``, and every failure reads the same: a FIFO
    would block the thread, a device never ends, and a distinct error per cause would let a
    proxy probe this machine's file system.
    """
    if path is None:
        return None, "the proxy names no outlier event log (OUTLIER_LOG)"
    if not os.path.isabs(path):
        return None, f"{path}: not an absolute path"
    try:
        tail = _read_tail(path, LOG_TAIL_BYTES)
    except OSError:
        return None, f"{path}: {LOG_NOT_READABLE}"
    return parse_outlier_log(tail.decode("utf-8", "replace")), None


def _read_tail(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{path} is not a regular file")
        # pread never reads past ``limit``, even when Envoy appends meanwhile.
        return os.pread(fd, limit, max(0, status.st_size - limit))
    finally:
        os.close(fd)
