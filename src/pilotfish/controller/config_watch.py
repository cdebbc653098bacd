"""Notice saved edits in a config folder, by polling.

Polling a few small YAML files costs little and behaves the same on every filesystem
(inotify misses edits on some network and container mounts); 0.2 s keeps a saved edit
well inside the one-second budget from save to traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from pilotfish.load.loader import yaml_files


def config_fingerprint(directory: Path) -> str:
    """A hash of every config file's path and content (the files the loader reads)."""
    digest = hashlib.sha256()
    for path in sorted(yaml_files(directory)):
        digest.update(str(path.relative_to(directory)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue  # deleted between listing and reading: the next poll sees it gone
    return digest.hexdigest()


async def watch_config_dir(
    directory: Path, interval: float = 0.2, last: str = ""
) -> AsyncIterator[str]:
    """Yield the folder's fingerprint each time it differs from ``last`` (content already seen)."""
    while True:
        current = await asyncio.to_thread(config_fingerprint, directory)
        if current != last:
            last = current
            yield current
        await asyncio.sleep(interval)
