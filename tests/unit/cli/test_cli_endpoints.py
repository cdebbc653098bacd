"""`pilotfish endpoints`' table, from answers shaped as ``GET /api/endpoints`` gives them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pilotfish.cli.endpoint_commands import format_endpoints
from pilotfish.cli.main import build_parser

NOW = datetime(2026, 12, 1, 16, 10, 30, tzinfo=UTC)
SERVICE = "backend.default.svc.cluster.local"


def endpoint(address: str, name: str, health: str = "HEALTHY", **extra: Any) -> dict[str, Any]:
    return {
        "address": address,
        "endpoint": name,
        "locality": "eu/eu-1",
        "health": health,
        "problems": [],
        "rq_active": 1,
        "rq_total": 40,
        "rq_error": 0,
        "cx_active": 2,
        **extra,
    }


def proxy(name: str, endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "proxy": name,
        "kind": "sidecar",
        "admin": "127.0.0.1:15000",
        "error": None,
        "outlier_log": "/tmp/x/outlier-events.log",
        "outlier_log_error": None,
        "clusters": [{"name": "c", "port": 8080, "subset": None, "endpoints": endpoints}],
        **extra,
    }


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """Table rows by (proxy, endpoint), split on runs of two spaces or more."""
    import re

    found = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 4 and cells[0] != "PROXY":
            found[(cells[0], cells[3])] = cells
    return found


def test_an_ejected_endpoint_shows_since_when_and_why() -> None:
    ejection = {"since": "2026-12-01T16:10:18.389Z", "reason": "CONSECUTIVE_5XX", "ejections": 2}
    body = {
        "service": SERVICE,
        "proxies": [
            proxy(
                "frontend-0",
                [
                    endpoint("127.0.0.1:4001", "backend-0"),
                    endpoint("127.0.0.1:4002", "backend-1", "EJECTED", ejection=ejection),
                ],
            )
        ],
    }
    text = format_endpoints(body, NOW)
    assert text.startswith(f"service {SERVICE}")
    table = rows(text)
    ejected = table[("frontend-0", "backend-1")]
    assert ejected[6:9] == ["EJECTED", "16:10:18Z (12s ago)", "CONSECUTIVE_5XX (ejection #2)"]
    healthy = table[("frontend-0", "backend-0")]
    assert healthy[6:] == ["HEALTHY", "-", "-", "1", "40", "0", "2"]
    assert "not seen" not in text


def test_a_returned_endpoint_says_since_when_it_is_back() -> None:
    last = {
        "since": "2026-12-01T16:10:00Z",
        "reason": "CONSECUTIVE_GATEWAY_FAILURE",
        "ejections": 1,
        "returned_at": "2026-12-01T16:10:20Z",
    }
    body = {
        "service": SERVICE,
        "proxies": [proxy("f-0", [endpoint("a:1", "b-0", last_ejection=last)])],
    }
    (row,) = rows(format_endpoints(body, NOW)).values()
    assert row[8] == "back since 16:10:20Z (10s ago), was CONSECUTIVE_GATEWAY_FAILURE (ejection #1)"


def test_what_was_not_seen_is_said_with_the_reason() -> None:
    unknown = {"since": None, "reason": None, "ejections": None, "unknown": "unreadable"}
    body = {
        "service": SERVICE,
        "proxies": [
            proxy(
                "frontend-0",
                [endpoint("127.0.0.1:4002", "backend-1", "EJECTED", ejection=unknown)],
                outlier_log_error="/elsewhere/outlier-events.log: No such file or directory",
            ),
            proxy("gateway", [], error="its Envoy admin did not answer: refused", clusters=[]),
            proxy("lonely-0", [], clusters=[]),
        ],
    }
    text = format_endpoints(body, NOW)
    (row,) = rows(text).values()
    assert row[6:9] == ["EJECTED", "?", "?"]
    assert "gateway: not seen: its Envoy admin did not answer: refused" in text
    assert "lonely-0: has no cluster of backend" in text
    assert (
        "frontend-0: since when and why an endpoint is ejected: unknown: "
        "/elsewhere/outlier-events.log: No such file" in text
    )


def test_no_proxy_seeing_the_service_is_said() -> None:
    text = format_endpoints({"service": SERVICE, "proxies": []}, NOW)
    assert f"(no proxy shows an endpoint of {SERVICE})" in text


def test_the_command_line() -> None:
    args = build_parser().parse_args(["endpoints", "mesh", "backend", "--proxy", "f-0", "--json"])
    assert (args.service, args.proxy, args.json) == ("backend", "f-0", True)
