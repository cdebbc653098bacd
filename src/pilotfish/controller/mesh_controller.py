"""The control plane's heart: holds the last good config and the live endpoints, and hands each
proxy a consistent snapshot.

Everything here is synchronous and cheap except translation, which runs once per generation
per proxy and is cached. The xDS server reaches this class only through ``SnapshotSource``
(``generation``, ``wait_for_change``, ``snapshot_for``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pilotfish.discovery import build_view
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.snapshot import Snapshot, check_consistency, make_snapshot
from pilotfish.translate import MeshTranslator

log = logging.getLogger("pilotfish.controller")


@dataclass(frozen=True)
class ConfigStatus:
    """What the admin API and ``proxy-status`` show about the config folder."""

    applied_at: float | None = None
    rejected_at: float | None = None
    diagnostics: tuple[Diagnostic, ...] = ()
    snapshot_problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "applied_at": self.applied_at,
            "rejected_at": self.rejected_at,
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "snapshot_problems": list(self.snapshot_problems),
        }


@dataclass
class _Generation:
    number: int
    view: MeshView
    translator: MeshTranslator
    snapshots: dict[str, tuple[ProxyNode, Snapshot]] = field(default_factory=dict)


class MeshController:
    """Implements ``pilotfish.xds.SnapshotSource``."""

    def __init__(self, debounce_seconds: float = 0.05) -> None:
        self._config: MeshConfig | None = None
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._current: _Generation | None = None
        self._last_good: dict[str, Snapshot] = {}
        self._changed = asyncio.Condition()
        self._debounce_seconds = debounce_seconds
        self._publish_task: asyncio.Task[None] | None = None
        self.status = ConfigStatus()

    # --- inputs -----------------------------------------------------------------------------

    def apply_config(self, config: MeshConfig | None, diagnostics: Iterable[Diagnostic]) -> bool:
        """Take a freshly loaded config; a rejected one (None) leaves the last good one live."""
        diagnostics = tuple(diagnostics)
        now = time.time()
        if config is None:
            self.status = ConfigStatus(
                applied_at=self.status.applied_at,
                rejected_at=now,
                diagnostics=diagnostics,
                snapshot_problems=self.status.snapshot_problems,
            )
            for diagnostic in diagnostics:
                log.error("config rejected, still serving the last good config: %s", diagnostic)
            return False
        self._config = config
        self.status = ConfigStatus(applied_at=now, diagnostics=diagnostics)
        for diagnostic in diagnostics:
            log.warning("%s", diagnostic)
        self._schedule_publish()
        return True

    def set_endpoint(self, hostname: str, key: str, endpoint: Endpoint | None) -> None:
        """Add, replace or (with None) remove one live endpoint of a service."""
        if endpoint is None:
            if self._endpoints.pop((hostname, key), None) is None:
                return
        else:
            self._endpoints[(hostname, key)] = endpoint
        self._schedule_publish()

    @property
    def config(self) -> MeshConfig | None:
        return self._config

    @property
    def view(self) -> MeshView | None:
        return self._current.view if self._current else None

    # --- SnapshotSource ----------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._current.number if self._current else 0

    async def wait_for_change(self, seen_generation: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation != seen_generation)
            return self.generation

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        current = self._current
        if current is None:
            return None
        cached = current.snapshots.get(node.id)
        if cached is not None and cached[0] == node:
            return cached[1]
        snapshot = make_snapshot(current.translator.resources_for(node))
        problems = check_consistency(snapshot)
        if problems:
            self._report_snapshot_problems(node, problems)
            # Keep this proxy on what it had: an inconsistent snapshot would break traffic.
            return self._last_good.get(node.id)
        current.snapshots[node.id] = (node, snapshot)
        self._last_good[node.id] = snapshot
        return snapshot

    def forget_proxy(self, node_id: str) -> None:
        self._last_good.pop(node_id, None)
        if self._current is not None:
            self._current.snapshots.pop(node_id, None)

    # --- publishing ---------------------------------------------------------------------------

    def publish_now(self) -> None:
        """Start a new generation from the current config and endpoints, and wake the streams."""
        if self._advance_generation():
            asyncio.get_running_loop().create_task(self._notify())

    def _advance_generation(self) -> bool:
        if self._config is None:
            return False
        view = build_view(self._config, self._runtime_endpoints())
        number = self.generation + 1
        self._current = _Generation(number, view, MeshTranslator(view))
        if self.status.snapshot_problems:
            self.status = ConfigStatus(
                applied_at=self.status.applied_at,
                rejected_at=self.status.rejected_at,
                diagnostics=self.status.diagnostics,
            )
        log.info("published generation %d", number)
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _schedule_publish(self) -> None:
        """Coalesce bursts (a folder save, a dozen replicas starting) into one push."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._advance_generation()  # no event loop, so no stream is waiting to be woken
            return
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = loop.create_task(self._publish_after_quiet())

    async def _publish_after_quiet(self) -> None:
        await asyncio.sleep(self._debounce_seconds)
        self.publish_now()

    def _runtime_endpoints(self) -> dict[str, list[Endpoint]]:
        grouped: dict[str, list[Endpoint]] = {}
        for (hostname, _key), endpoint in sorted(self._endpoints.items()):
            grouped.setdefault(hostname, []).append(endpoint)
        return grouped

    def _report_snapshot_problems(self, node: ProxyNode, problems: list[str]) -> None:
        for problem in problems:
            log.error("snapshot for %s is inconsistent, not sent: %s", node.id, problem)
        self.status = ConfigStatus(
            applied_at=self.status.applied_at,
            rejected_at=self.status.rejected_at,
            diagnostics=self.status.diagnostics,
            snapshot_problems=tuple(f"{node.id}: {p}" for p in problems),
        )
