"""`pilotfish ca status` and `pilotfish ca rotate`: the CA as the admin API or its files show it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# What a POST that changes state must carry. A page in a browser cannot send it to
# 127.0.0.1 without a CORS preflight, which the admin API never allows: no cross-site POST.
ADMIN_HEADER = "X-Pilotfish-Admin"
ADMIN_HEADER_VALUE = "1"


def fetch_ca_status(admin_url: str, timeout: float = 5.0) -> dict[str, object]:
    with _direct.open(admin_url.rstrip("/") + "/api/ca", timeout=timeout) as response:
        data = json.load(response)
    assert isinstance(data, dict)
    return data


def request_rotation(admin_url: str, timeout: float = 10.0) -> tuple[bool, dict[str, object]]:
    """(started, body): the control plane's answer to POST /api/ca/rotate."""
    request = urllib.request.Request(
        admin_url.rstrip("/") + "/api/ca/rotate",
        method="POST",
        headers={ADMIN_HEADER: ADMIN_HEADER_VALUE},
    )
    try:
        with _direct.open(request, timeout=timeout) as response:
            return True, json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc) if exc.headers.get_content_type() == "application/json" else {}
        return False, body if isinstance(body, dict) else {}


def format_ca_status(status: Mapping[str, object]) -> str:
    rotation = status.get("rotation")
    rotation = rotation if isinstance(rotation, Mapping) else {}
    kind = "plugged in (MeshConfig pluggedCA)" if status.get("plugged") else "self-signed"
    lines = [
        f"trust domain {status.get('trust_domain')}, {kind} CA, issuer epoch "
        f"{status.get('issuer_epoch')}, rotation {rotation.get('phase')}",
    ]
    if rotation.get("phase") == "overlap":
        waiting = rotation.get("waiting_for")
        waiting = waiting if isinstance(waiting, list) else []
        lines.append(
            f"  both roots are trusted until every agent re-issued or {rotation.get('drop_after')}"
            + (f"; waiting for {', '.join(map(str, waiting))}" if waiting else "")
        )
    for heading, key in (("ROOTS", "roots"), ("INTERMEDIATES", "intermediates")):
        certificates = status.get(key)
        if not isinstance(certificates, list) or not certificates:
            continue
        lines += ["", heading]
        for c in certificates:
            if isinstance(c, Mapping):
                signing = "  (signs)" if c.get("signing") else ""
                lines.append(
                    f"  {c.get('subject')}  serial {str(c.get('serial'))[:16]}  "
                    f"valid until {c.get('not_after')}{signing}"
                )
    warnings = status.get("warnings")
    if isinstance(warnings, list) and warnings:
        lines += ["", "WARNINGS", *(f"  {w}" for w in warnings)]
    signed = status.get("recently_signed")
    if isinstance(signed, list):
        lines += ["", f"RECENTLY SIGNED ({len(signed)}; refused {status.get('refused', 0)})"]
        for r in signed[:20]:
            if isinstance(r, Mapping):
                lines.append(
                    f"  {r.get('identity')}  node {r.get('node_id') or '-'}  epoch "
                    f"{r.get('issuer_epoch')}  until {r.get('not_after')}"
                )
    return "\n".join(lines)
