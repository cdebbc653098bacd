"""The check a snapshot must pass before any proxy sees it."""

from __future__ import annotations

from pilotfish.snapshot import type_urls
from pilotfish.snapshot.snapshot import Snapshot

_WHAT = {
    type_urls.CLUSTER: "cluster",
    type_urls.ENDPOINT: "load assignment",
    type_urls.LISTENER: "listener",
    type_urls.ROUTE: "route configuration",
    type_urls.SECRET: "secret",
}


def check_consistency(snapshot: Snapshot) -> list[str]:
    """Every dangling reference and duplicate name, one readable line each; empty means usable."""
    problems = [
        f"{_what(type_url)} {name!r} is defined more than once"
        for type_url, name in snapshot.duplicate_names
    ]
    problems.extend(
        f"{_what(type_url)} {name!r} references "
        f"{_what(wanted_type)} {wanted_name!r}, which does not exist"
        for type_url, name, wanted_type, wanted_name in snapshot.dangling
    )
    return problems


def _what(type_url: str) -> str:
    return _WHAT.get(type_url, type_urls.short_name(type_url))
