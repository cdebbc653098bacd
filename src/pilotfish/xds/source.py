"""Where the xDS server gets snapshots from: a small interface, implemented by the controller."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import Snapshot


class SnapshotSource(Protocol):
    @property
    def generation(self) -> int:
        """Grows by at least one every time any proxy's snapshot may have changed."""
        ...

    async def wait_for_change(self, seen_generation: int) -> int:
        """Return the new generation as soon as it differs from ``seen_generation``."""
        ...

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        """The proxy's complete snapshot, or None while there is none (the stream then waits)."""
        ...


class InMemorySnapshotSource:
    """Snapshots set by hand, per node id or as a default for every node.

    Enough for tests, benchmarks and embedding; the controller has its own source.
    """

    def __init__(self) -> None:
        self._generation = 0
        self._changed = asyncio.Event()
        self._by_node: dict[str, Snapshot | None] = {}
        self._default: Snapshot | None = None

    @property
    def generation(self) -> int:
        return self._generation

    async def wait_for_change(self, seen_generation: int) -> int:
        while self._generation == seen_generation:
            await self._changed.wait()
        return self._generation

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        if node.id in self._by_node:
            return self._by_node[node.id]
        return self._default

    def set_snapshot(self, snapshot: Snapshot | None, node_id: str | None = None) -> None:
        """Publish for one node, or (``node_id=None``) for every node without its own."""
        if node_id is None:
            self._default = snapshot
        else:
            self._by_node[node_id] = snapshot
        self._generation += 1
        # Waiters hold the old event; a fresh one makes the next wait block again.
        self._changed.set()
        self._changed = asyncio.Event()
