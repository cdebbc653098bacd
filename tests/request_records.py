"""RequestRecords as the access-log service would make them, for tests of the live views."""

from __future__ import annotations

from dataclasses import replace

from pilotfish.telemetry.records import (
    ConnectionEvent,
    ConnectionRecord,
    Peer,
    Reporter,
    RequestRecord,
)

T0 = 1_800_000_000.0  # a fixed "now" for clocks in tests, on a 10 s boundary


def record(
    *,
    reporter: Reporter = "destination",
    service: str = "backend.default.svc.cluster.local",
    source: str = "frontend",
    destination: str = "backend",
    at: float = T0,
    duration_ms: float = 5.0,
    code: int = 200,
    flags: tuple[str, ...] = (),
    path: str = "/",
    proxy: str | None = None,
    grpc_status: str = "",
) -> RequestRecord:
    """One request that ended at ``at``, reported by ``reporter``'s proxy."""
    name, _, rest = service.partition(".")
    namespace = rest.split(".")[0] if ".svc." in service else "unknown"
    reporting = source if reporter == "source" else destination
    return RequestRecord(
        start_time=at - duration_ms / 1000,
        reporter=reporter,
        proxy=proxy or f"{reporting}-0",
        source=Peer(workload=source, namespace="default", app=source),
        destination=Peer(workload=destination, namespace="default", app=destination),
        destination_service=service,
        destination_service_name=name,
        destination_service_namespace=namespace,
        method="GET",
        path=path,
        authority=f"{name}:8080",
        request_protocol="http",
        response_code=code,
        grpc_status=grpc_status,
        response_flags=flags,
        response_code_details="via_upstream"
        if not flags
        else "upstream_reset_before_response_started{connection_failure}",
        upstream_failure="",
        duration_ms=duration_ms,
        request_bytes=0,
        response_bytes=12,
        upstream_cluster=f"outbound|8080||{service}",
        upstream_host="127.0.0.1:40001",
        route_name="default",
        request_id="5d1c7a2e-0000-4000-8000-000000000001",
        trace_id="",
        connection_security_policy="mutual_tls" if reporter == "destination" else "unknown",
        http_version="HTTP/1.1",
    )


def both_sides(**kwargs: object) -> list[RequestRecord]:
    """A request between two sidecars: the caller's record and the callee's."""
    callee = record(reporter="destination", **kwargs)  # type: ignore[arg-type]
    caller = replace(callee, reporter="source", proxy=f"{callee.source.workload}-0")
    return [caller, callee]


def connection(
    *,
    event: ConnectionEvent = "closed",
    proxy: str = "db-0",
    at: float = T0,
    received: int = 1200,
    sent: int = 34_000,
    flags: tuple[str, ...] = (),
) -> ConnectionRecord:
    """A TCP connection from ``client`` to ``db``, reported by the db's sidecar at ``at``."""
    return ConnectionRecord(
        start_time=at,
        event=event,
        opened=event != "periodic",
        reporter="destination",
        proxy=proxy,
        source=Peer(workload="client", namespace="default", app="client"),
        destination=Peer(workload="db", namespace="default", app="db"),
        destination_service="db.default.svc.cluster.local",
        destination_service_name="db",
        destination_service_namespace="default",
        received_bytes=received,
        sent_bytes=sent,
        received_delta=received,
        sent_delta=sent,
        duration_ms=5321.4,
        response_flags=flags,
        upstream_cluster="inbound|5432||",
        upstream_host="127.0.0.1:5432",
        upstream_failure="",
        termination_details="",
        connection_security_policy="mutual_tls",
        downstream_remote="127.0.0.1:40404",
        downstream_local="127.0.0.1:16006",
        connection_id="c8393969-3e68-4f76-b11a-9947f210d2de",
    )


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
