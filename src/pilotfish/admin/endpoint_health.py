"""What one proxy sees of a service's endpoints, from its Envoy's own answers. Pure.

Two sources, both Envoy's: its admin ``/clusters?format=json`` (each host's health flags,
locality and request counters, as this Envoy keeps them) and its outlier-detection event
log (``cluster_manager.outlier_detection.event_log_path``: one
``envoy.data.cluster.v3.OutlierDetectionEvent`` JSON object a line), which alone says when
and why a host was ejected. ``endpoints_api`` fetches both; this module only reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

OUTBOUND = "outbound"

Health = Literal[
    "HEALTHY",
    "EJECTED",
    "FAILED_HEALTH_CHECK",
    "UNHEALTHY",
    "DRAINING",
    "DEGRADED",
    "PENDING_REMOVAL",
    "PENDING_HEALTH_CHECK",
]

# Envoy's HostHealthStatus flags, worst first: the first one set names the host's health.
_FLAGS: tuple[tuple[str, Health, str], ...] = (
    ("failed_outlier_check", "EJECTED", "ejected by outlier detection"),
    ("failed_active_health_check", "FAILED_HEALTH_CHECK", "failed its active health check"),
    ("active_hc_timeout", "FAILED_HEALTH_CHECK", "its active health check timed out"),
    (
        "excluded_via_immediate_hc_fail",
        "FAILED_HEALTH_CHECK",
        "excluded: it answered a health check with an immediate failure",
    ),
    ("failed_active_degraded_check", "DEGRADED", "degraded, says its active health check"),
    (
        "pending_dynamic_removal",
        "PENDING_REMOVAL",
        "no longer an endpoint; kept until its health checks or connections end",
    ),
    ("pending_active_hc", "PENDING_HEALTH_CHECK", "waiting for its first active health check"),
)
_EDS_HEALTH: Mapping[str, Health] = {
    "UNHEALTHY": "UNHEALTHY",
    "TIMEOUT": "UNHEALTHY",
    "DRAINING": "DRAINING",
    "DEGRADED": "DEGRADED",
}
_COUNTERS = ("rq_active", "rq_total", "rq_error", "cx_active")


@dataclass(frozen=True)
class OutlierEvent:
    """One line of an outlier event log. ``reason`` (Envoy's ``type``) means something only
    for an EJECT: Envoy writes its enum's first value (CONSECUTIVE_5XX) on every UNEJECT."""

    cluster: str
    upstream: str
    """``host:port``, as the host's address in ``/clusters``."""
    action: Literal["EJECT", "UNEJECT"]
    reason: str
    timestamp: str
    ejections: int
    """``num_ejections``: how often the host has been ejected (it multiplies the ejection time)."""
    enforced: bool
    """False: detected but not acted on (that detector's ``enforcing_*`` is below 100%)."""


def parse_outlier_log(text: str) -> list[OutlierEvent]:
    """Every event in ``text``, oldest first. Anything else is skipped: the tail of a file
    read from the middle starts with part of a line, and Envoy may be writing the last one."""
    events: list[OutlierEvent] = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        event = _event(data) if isinstance(data, dict) else None
        if event is not None:
            events.append(event)
    return events


def _event(data: Mapping[str, object]) -> OutlierEvent | None:
    action = data.get("action")
    cluster, upstream = data.get("cluster_name"), data.get("upstream_url")
    if action not in ("EJECT", "UNEJECT") or not isinstance(cluster, str):
        return None
    if not isinstance(upstream, str):
        return None
    ejections = data.get("num_ejections", 0)
    return OutlierEvent(
        cluster=cluster,
        upstream=upstream,
        action="EJECT" if action == "EJECT" else "UNEJECT",
        reason=str(data.get("type", "")),
        timestamp=str(data.get("timestamp", "")),
        ejections=ejections if isinstance(ejections, int) else 0,
        enforced=data.get("enforced") is True,
    )


@dataclass(frozen=True)
class Ejection:
    """The host's latest ejection, and when it returned (None: it is still out)."""

    since: str
    reason: str
    ejections: int
    returned_at: str | None


def latest_ejections(events: Iterable[OutlierEvent]) -> dict[tuple[str, str], Ejection]:
    """Per (cluster, host address), its latest enforced ejection. Events are in log order."""
    latest: dict[tuple[str, str], Ejection] = {}
    for event in events:
        key = (event.cluster, event.upstream)
        if event.action == "EJECT" and event.enforced:
            latest[key] = Ejection(event.timestamp, event.reason, event.ejections, None)
        elif event.action == "UNEJECT" and key in latest:
            ejection = latest[key]
            latest[key] = Ejection(
                ejection.since, ejection.reason, ejection.ejections, event.timestamp
            )
    return latest


@dataclass(frozen=True)
class HostState:
    address: str
    locality: str
    """``region/zone/subzone`` as this Envoy has it; empty when the endpoint has none."""
    health: Health
    problems: tuple[str, ...]
    """In words, every flag Envoy set on the host."""
    rq_active: int = 0
    rq_total: int = 0
    rq_error: int = 0
    cx_active: int = 0


@dataclass(frozen=True)
class ClusterHosts:
    name: str
    port: int
    subset: str | None
    hostname: str
    hosts: tuple[HostState, ...]


def parse_outbound_cluster(name: str) -> tuple[int, str | None, str] | None:
    """(port, subset, hostname) of an ``outbound|port|subset|hostname`` cluster, else None."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != OUTBOUND or not parts[1].isdigit() or not parts[3]:
        return None
    return int(parts[1]), parts[2] or None, parts[3]


def service_clusters(
    clusters_json: Mapping[str, object], hostname: str | None
) -> list[ClusterHosts]:
    """The outbound clusters of ``hostname`` (None: of every service) in an Envoy's
    ``/clusters?format=json``, by name."""
    found: list[ClusterHosts] = []
    statuses = clusters_json.get("cluster_statuses")
    for status in statuses if isinstance(statuses, list) else []:
        if not isinstance(status, Mapping):
            continue
        parsed = parse_outbound_cluster(str(status.get("name", "")))
        if parsed is None or hostname not in (None, parsed[2]):
            continue
        hosts = status.get("host_statuses")
        found.append(
            ClusterHosts(
                name=str(status["name"]),
                port=parsed[0],
                subset=parsed[1],
                hostname=parsed[2],
                hosts=tuple(
                    _host(h) for h in (hosts if isinstance(hosts, list) else []) if _is_map(h)
                ),
            )
        )
    return sorted(found, key=lambda c: (c.hostname, c.port, c.subset or ""))


def _is_map(value: object) -> bool:
    return isinstance(value, Mapping)


def _host(status: Mapping[str, object]) -> HostState:
    health, problems = host_health(_mapping(status.get("health_status")))
    counters = {name: 0 for name in _COUNTERS}
    stats = status.get("stats")
    for stat in stats if isinstance(stats, list) else []:
        # uint64 values come as JSON strings, and a zero is left out altogether.
        if isinstance(stat, Mapping) and stat.get("name") in counters:
            counters[str(stat["name"])] = _int(stat.get("value"))
    return HostState(
        address=_address(_mapping(status.get("address"))),
        locality=_locality(_mapping(status.get("locality"))),
        health=health,
        problems=problems,
        **counters,
    )


def host_health(flags: Mapping[str, object]) -> tuple[Health, tuple[str, ...]]:
    """The host's health (its worst flag) and every flag in words."""
    worst: Health | None = None
    problems: list[str] = []
    for key, health, words in _FLAGS:
        if flags.get(key) is True:
            worst = worst or health
            problems.append(words)
    eds = str(flags.get("eds_health_status", "HEALTHY"))
    if eds in _EDS_HEALTH:
        worst = worst or _EDS_HEALTH[eds]
        problems.append(f"its endpoint discovery says {eds}")
    return worst or "HEALTHY", tuple(problems)


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def _address(address: Mapping[str, object]) -> str:
    socket = _mapping(address.get("socket_address"))
    if socket:
        host = str(socket.get("address", ""))
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{_int(socket.get('port_value'))}"
    pipe = _mapping(address.get("pipe"))
    return str(pipe.get("path", "?"))


def _locality(locality: Mapping[str, object]) -> str:
    parts = [str(locality.get(k, "")) for k in ("region", "zone", "sub_zone")]
    while parts and not parts[-1]:
        parts.pop()
    return "/".join(parts)


def match_services(query: str, hostnames: Iterable[str]) -> list[str]:
    """The hostnames ``query`` names: itself if known, else those it is the first labels of
    (``backend`` and ``backend.default`` name ``backend.default.svc.cluster.local``)."""
    known = sorted(set(hostnames))
    if query in known:
        return [query]
    return [h for h in known if h.startswith(query + ".")]


def proxy_endpoints_json(
    clusters: Sequence[ClusterHosts],
    ejections: Mapping[tuple[str, str], Ejection] | None,
    names: Mapping[str, str],
) -> list[dict[str, object]]:
    """The ``clusters`` of one proxy's entry in ``GET /api/endpoints``.

    An ejected host has an ``ejection`` (since, reason, ejections); when the proxy's event log
    could not be read (``ejections`` None) or has no line for it yet, since and reason are
    null and ``unknown`` says why. A host that was ejected and is back has ``last_ejection``
    (with ``returned_at``). ``names``: the registry's endpoint name per ``host:port``, so
    that a replica is recognisable.
    """
    return [
        {
            "name": cluster.name,
            "port": cluster.port,
            "subset": cluster.subset,
            "endpoints": [
                _host_json(cluster.name, host, ejections, names) for host in cluster.hosts
            ],
        }
        for cluster in clusters
    ]


def _host_json(
    cluster: str,
    host: HostState,
    ejections: Mapping[tuple[str, str], Ejection] | None,
    names: Mapping[str, str],
) -> dict[str, object]:
    entry: dict[str, object] = {
        "address": host.address,
        "endpoint": names.get(host.address),
        "locality": host.locality,
        "health": host.health,
        "problems": list(host.problems),
        "rq_active": host.rq_active,
        "rq_total": host.rq_total,
        "rq_error": host.rq_error,
        "cx_active": host.cx_active,
    }
    ejection = ejections.get((cluster, host.address)) if ejections is not None else None
    if host.health == "EJECTED":
        entry["ejection"] = _current_ejection(ejection, readable=ejections is not None)
    elif ejection is not None and ejection.returned_at is not None:
        entry["last_ejection"] = _ejection_json(ejection)
    return entry


def _current_ejection(ejection: Ejection | None, *, readable: bool) -> dict[str, object]:
    if ejection is not None and ejection.returned_at is None:
        return _ejection_json(ejection)
    # Envoy writes its event log about once a second: a fresh ejection may not be there yet
    # (and the log's latest one for this host is then an earlier, ended one).
    unknown = (
        "not in its outlier event log yet" if readable else "its outlier event log is unreadable"
    )
    return {"since": None, "reason": None, "ejections": None, "unknown": unknown}


def _ejection_json(ejection: Ejection) -> dict[str, object]:
    entry: dict[str, object] = {
        "since": ejection.since,
        "reason": ejection.reason,
        "ejections": ejection.ejections,
    }
    if ejection.returned_at is not None:
        entry["returned_at"] = ejection.returned_at
    return entry


def ejected_count(clusters: Iterable[ClusterHosts]) -> int:
    """How many hosts of ``clusters`` are ejected (a host in two subsets counts twice: each
    subset is a cluster of its own, with its own outlier detection)."""
    return sum(1 for cluster in clusters for host in cluster.hosts if host.health == "EJECTED")


def seconds_between(earlier: str, later: datetime) -> float | None:
    """Seconds from Envoy's ISO timestamp ``earlier`` to ``later``; None if unreadable."""
    try:
        then = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None or later.tzinfo is None:
        return None
    return (later - then).total_seconds()
