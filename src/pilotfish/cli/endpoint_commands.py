"""`pilotfish endpoints DIR SERVICE`: each endpoint of a service as each proxy sees it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pilotfish.admin.endpoint_health import seconds_between
from pilotfish.cli.admin_api import NoMesh, admin_url
from pilotfish.cli.telemetry_commands import get_json

COLUMNS = (
    "PROXY", "PORT", "SUBSET", "ENDPOINT", "ADDRESS", "LOCALITY", "HEALTH", "SINCE", "WHY",
    "RQ_ACTIVE", "RQ_TOTAL", "RQ_ERROR", "CX_ACTIVE",
)  # fmt: skip


def add_endpoint_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    endpoints = commands.add_parser(
        "endpoints",
        help="each endpoint of a service as each proxy sees it: healthy or ejected (since "
        "when, why), its requests",
    )
    endpoints.add_argument("directory", type=Path, help="the folder `up` runs")
    endpoints.add_argument("service", help="the service: its name or hostname")
    endpoints.add_argument("--proxy", help="only as this proxy (a node id) sees it")
    endpoints.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    endpoints.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")
    endpoints.set_defaults(handler=run_endpoints)


def run_endpoints(args: argparse.Namespace) -> int:
    query = {"service": args.service, "proxy": args.proxy or ""}
    try:
        body = get_json(admin_url(args.directory, args.admin), "/api/endpoints", query)
    except NoMesh as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_endpoints(body, datetime.now(UTC)))
    return 0


# --- pure formatting ---------------------------------------------------------------------------


def format_endpoints(body: Mapping[str, object], now: datetime) -> str:
    """``/api/endpoints``' answer as one table, then what could not be seen and why."""
    service = str(body.get("service", "?"))
    table: list[tuple[str, ...]] = [COLUMNS]
    notes: list[str] = []
    proxies = body.get("proxies")
    for proxy in proxies if isinstance(proxies, list) else []:
        name = str(proxy.get("proxy", "?"))
        if proxy.get("error"):
            notes.append(f"  {name}: not seen: {proxy['error']}")
            continue
        clusters = proxy.get("clusters") or []
        if not clusters:
            notes.append(f"  {name}: has no cluster of {service}")
        unknown = False
        for cluster in clusters:
            for endpoint in cluster.get("endpoints", []):
                since, why, missing = _ejection_cells(endpoint, now)
                unknown = unknown or missing
                table.append(
                    (
                        name,
                        str(cluster.get("port", "?")),
                        str(cluster.get("subset") or "-"),
                        str(endpoint.get("endpoint") or "-"),
                        str(endpoint.get("address", "?")),
                        str(endpoint.get("locality") or "-"),
                        str(endpoint.get("health", "?")),
                        since,
                        why,
                        *(str(endpoint.get(k.lower(), 0)) for k in COLUMNS[-4:]),
                    )
                )
        if unknown:
            reason = proxy.get("outlier_log_error") or (
                "not in its outlier event log yet (Envoy writes it about once a second)"
            )
            notes.append(f"  {name}: since when and why an endpoint is ejected: unknown: {reason}")
    lines = [f"service {service}", ""]
    if len(table) > 1:
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ]
    else:
        lines.append(f"(no proxy shows an endpoint of {service})")
    if notes:
        lines += ["", "not seen, or seen in part:", *notes]
    return "\n".join(lines)


def _ejection_cells(endpoint: Mapping[str, object], now: datetime) -> tuple[str, str, bool]:
    """SINCE and WHY of one endpoint, and whether an ejection's since and why are unknown."""
    current = endpoint.get("ejection")
    if isinstance(current, Mapping):
        if current.get("since") is None:
            return "?", "?", True
        return _moment(str(current["since"]), now), _reason(current), False
    last = endpoint.get("last_ejection")
    if isinstance(last, Mapping) and last.get("returned_at"):
        back = _moment(str(last["returned_at"]), now)
        return "-", f"back since {back}, was {_reason(last)}", False
    return "-", "-", False


def _reason(ejection: Mapping[str, object]) -> str:
    count = ejection.get("ejections")
    suffix = f" (ejection #{count})" if isinstance(count, int) and count > 0 else ""
    return f"{ejection.get('reason', '?')}{suffix}"


def _moment(timestamp: str, now: datetime) -> str:
    """``16:10:18Z (12s ago)`` from Envoy's ``2026-12-01T16:10:18.389Z``."""
    seconds = seconds_between(timestamp, now)
    clock = timestamp.partition("T")[2][:8] + "Z" if "T" in timestamp else timestamp
    return f"{clock} ({max(0, round(seconds))}s ago)" if seconds is not None else clock
