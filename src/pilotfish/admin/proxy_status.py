"""`pilotfish proxy-status`: each proxy's config sync state, like `istioctl proxy-status`."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence

from pilotfish.snapshot import type_urls

# Shown even before any proxy has asked for them; other types get a column once one has.
USUAL_COLUMNS = ("CDS", "EDS", "LDS", "RDS")
# A type the proxy never subscribed to: its Envoy needs none (no HTTP server, no RDS).
NOT_ASKED = "-"
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_status(
    admin_url: str, timeout: float = 5.0
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Read proxies and config status from the admin API (never through a configured proxy)."""

    def get(path: str) -> dict[str, object]:
        with _direct.open(admin_url.rstrip("/") + path, timeout=timeout) as response:
            data = json.load(response)
        assert isinstance(data, dict)
        return data

    proxies = get("/api/proxies").get("proxies", [])
    assert isinstance(proxies, list)
    return proxies, get("/api/config")


def fetch_ejections(admin_url: str, timeout: float = 5.0) -> list[dict[str, object]] | None:
    """Per proxy, how many endpoints its Envoy has ejected; None if the API does not say
    (a control plane from before ``/api/ejections``): the column is then left out."""
    try:
        with _direct.open(admin_url.rstrip("/") + "/api/ejections", timeout=timeout) as response:
            data = json.load(response)
    except (OSError, ValueError):
        return None
    counts = data.get("proxies") if isinstance(data, dict) else None
    return counts if isinstance(counts, list) else None


def _cell(types: Mapping[str, object], short: str) -> str:
    entry = types.get(short)
    if not isinstance(entry, Mapping):
        return NOT_ASKED
    status = str(entry.get("status", "?"))
    version = entry.get("acked_version") or entry.get("sent_version") or ""
    return f"{status} ({str(version)[:8]})" if version else status


def _ejected_cell(entry: Mapping[str, object] | None) -> str:
    if entry is None:
        return "-"  # connected after the count was taken
    count = entry.get("ejected")
    return str(count) if isinstance(count, int) else "?"


def _expiry(not_after: object) -> str:
    # ISO 8601 to the minute: enough to see which proxy rotates next, short enough to fit.
    return str(not_after)[:16] + "Z" if isinstance(not_after, str) else "-"


def type_columns(proxies: Sequence[Mapping[str, object]]) -> tuple[str, ...]:
    """The usual four, plus every other type some proxy asked for, in push order."""
    seen = set(USUAL_COLUMNS)
    for proxy in proxies:
        types = proxy.get("types")
        if isinstance(types, Mapping):
            seen.update(str(short) for short in types)
    order = [type_urls.short_name(t) for t in type_urls.PUSH_ORDER]
    return tuple(sorted(seen, key=lambda s: (order.index(s) if s in order else len(order), s)))


def format_status(
    proxies: Sequence[Mapping[str, object]],
    config: Mapping[str, object],
    ejections: Sequence[Mapping[str, object]] | None = None,
) -> str:
    """The table; with ``ejections`` (``/api/ejections``), an EJECTED column: how many
    endpoints each proxy's Envoy has ejected, ``?`` when it could not be asked."""
    columns = type_columns(proxies)
    ejected = {str(e.get("proxy")): e for e in ejections or ()}
    extra = ("EJECTED",) if ejections is not None else ()
    header = ("NAME", "KIND", "STREAM", "IDENTITY", "CERT EXPIRES", *columns, *extra)
    rows: list[tuple[str, ...]] = [header]
    nacks: list[str] = []
    unasked: list[str] = []
    for proxy in sorted(proxies, key=lambda p: str(p.get("node_id"))):
        types = proxy.get("types")
        types = types if isinstance(types, Mapping) else {}
        rows.append(
            (
                str(proxy.get("node_id")),
                str(proxy.get("kind")),
                str(proxy.get("stream")),
                str(proxy.get("identity") or "-"),
                _expiry(proxy.get("cert_not_after")),
                *(_cell(types, short) for short in columns),
                *(_ejected_cell(ejected.get(str(proxy.get("node_id")))) for _ in extra),
            )
        )
        error = (ejected.get(str(proxy.get("node_id"))) or {}).get("error")
        if error:
            unasked.append(f"  {proxy.get('node_id')}: {error}")
        for short, entry in types.items():
            if isinstance(entry, Mapping) and entry.get("nack"):
                nacks.append(f"  {proxy.get('node_id')} {short}: {entry['nack']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no proxy is connected)")
    if any(NOT_ASKED in row[5 : 5 + len(columns)] for row in rows[1:]):
        lines.append(f"({NOT_ASKED}: not asked for, e.g. RDS by a proxy with no HTTP listener)")
    if nacks:
        lines += ["", "NACKs (the proxy rejected this config and kept its previous one):", *nacks]
    if unasked:
        lines += ["", "EJECTED ? (its Envoy could not be asked):", *unasked]
    lines += ["", *_config_lines(config)]
    return "\n".join(lines)


def _config_lines(config: Mapping[str, object]) -> list[str]:
    diagnostics = config.get("diagnostics")
    diagnostics = diagnostics if isinstance(diagnostics, list) else []
    rejected = config.get("rejected_at")
    applied = config.get("applied_at")
    lines = [f"config generation {config.get('generation')}"]
    if rejected and (not applied or float(str(rejected)) > float(str(applied))):
        lines.append("the latest config edit was REJECTED; proxies keep the last good config:")
    for d in diagnostics:
        if isinstance(d, Mapping):
            prefix = "" if d.get("severity") == "error" else "warning: "
            lines.append(
                f"  {d['file']}:{d['line']}:{d['col']}: {prefix}{d['field']}: {d['message']}"
            )
    problems = config.get("snapshot_problems")
    for problem in problems if isinstance(problems, list) else []:
        lines.append(f"  snapshot not sent: {problem}")
    return lines
