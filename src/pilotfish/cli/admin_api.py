"""Finding and reaching a running mesh's admin API, for the commands that read it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from pilotfish.cli.main import ADMIN_URL_FILE, STATE_DIR

# Straight to loopback: a proxy from the environment must not carry these requests.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoMesh(Exception):
    """No running mesh to ask, with what to do about it."""


def admin_url(directory: Path, admin: str | None) -> str:
    if admin:
        return admin.rstrip("/")
    path = directory / STATE_DIR / ADMIN_URL_FILE
    if not path.exists():
        raise NoMesh(
            f"no running mesh found in {directory} ({path} is missing): start it with "
            f"`pilotfish up {directory}`, or pass --admin URL"
        )
    return path.read_text().strip().rstrip("/")
