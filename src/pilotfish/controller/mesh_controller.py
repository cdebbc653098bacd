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
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pilotfish.discovery import build_view
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.snapshot import (
    PackedLayer,
    SharedMessagePacker,
    Snapshot,
    check_consistency,
    layered_snapshot,
    pack_own_layer,
)
from pilotfish.translate import MeshTranslator

log = logging.getLogger("pilotfish.controller")

# Last good snapshots are kept for proxies that may come back; this bounds the memory that
# proxies which never return (renamed replicas, test clients) can hold.
MAX_REMEMBERED_PROXIES = 4096


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
    packer: SharedMessagePacker = field(default_factory=SharedMessagePacker)
    # Per node id: the node as it last asked, and its snapshot (None: translation failed).
    snapshots: dict[str, tuple[ProxyNode, Snapshot | None]] = field(default_factory=dict)
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)


class MeshController:
    """Implements ``pilotfish.xds.SnapshotSource``."""

    def __init__(self, debounce_seconds: float = 0.02) -> None:
        self._config: MeshConfig | None = None
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._current: _Generation | None = None
        self._last_good: OrderedDict[str, tuple[ProxyNode, Snapshot]] = OrderedDict()
        self._own_layers: OrderedDict[str, tuple[MeshConfig, ProxyNode, PackedLayer]] = (
            OrderedDict()
        )
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
            self.status = replace(self.status, rejected_at=now, diagnostics=diagnostics)
            for diagnostic in diagnostics:
                if diagnostic.severity == "error":
                    log.error("config rejected, still serving the last good one: %s", diagnostic)
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
        elif self._endpoints.get((hostname, key)) == endpoint:
            return
        else:
            self._endpoints[(hostname, key)] = endpoint
        self._schedule_publish()

    @property
    def publish_pending(self) -> bool:
        return self._publish_task is not None and not self._publish_task.done()

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
        """This generation's snapshot for ``node``; its last good one if this one is broken."""
        current = self._current
        if current is None:
            return None
        cached = current.snapshots.get(node.id)
        if cached is None or cached[0] != node:
            cached = (node, self._build(current, node))
            current.snapshots[node.id] = cached
        snapshot = cached[1]
        if snapshot is None:
            # Only a snapshot made for this very node: a replaced replica keeps its id but
            # listens on other ports, so its predecessor's snapshot would be wrong for it.
            last_good = self._last_good.get(node.id)
            return last_good[1] if last_good is not None and last_good[0] == node else None
        self._last_good[node.id] = (node, snapshot)
        self._last_good.move_to_end(node.id)
        while len(self._last_good) > MAX_REMEMBERED_PROXIES:
            self._last_good.popitem(last=False)
        return snapshot

    def _build(self, current: _Generation, node: ProxyNode) -> Snapshot | None:
        try:
            snapshot = self._layered_snapshot(current, node)
            problems = check_consistency(snapshot)
        except Exception as exc:  # one proxy's failure must not take down the others
            log.exception("translation failed for %s", node.id)
            problems = [f"translation failed: {exc!r}"]
            snapshot = None
        if problems:
            for problem in problems:
                log.error(
                    "snapshot for %s not sent, it keeps its last good one: %s", node.id, problem
                )
            current.problems[node.id] = tuple(problems)
        else:
            current.problems.pop(node.id, None)
        self.status = replace(
            self.status,
            snapshot_problems=tuple(
                f"{node_id}: {p}" for node_id, found in current.problems.items() for p in found
            ),
        )
        return None if problems else snapshot

    def _layered_snapshot(self, current: _Generation, node: ProxyNode) -> Snapshot:
        """The generation's shared layer plus the node's own, packed again only when the config
        or the node changed (an endpoint change touches only the shared layer)."""
        config = current.view.config
        kept = self._own_layers.get(node.id)
        if kept is not None and kept[0] is config and kept[1] == node:
            own = kept[2]
        else:
            resources = current.translator.resources_for(node)
            assert resources.shared is not None
            own = pack_own_layer(resources, resources.shared, current.packer)
            self._own_layers[node.id] = (config, node, own)
        self._own_layers.move_to_end(node.id)
        while len(self._own_layers) > MAX_REMEMBERED_PROXIES:
            self._own_layers.popitem(last=False)
        return layered_snapshot(current.packer, current.translator.shared_for(node), own)

    # --- publishing ---------------------------------------------------------------------------

    def publish_now(self) -> None:
        """Start a new generation from the current config and endpoints, and wake the streams."""
        if self._publish_task is not None and self._publish_task is not asyncio.current_task():
            self._publish_task.cancel()  # this publish includes whatever it was waiting for
        self._publish_task = None
        if self._config is None:
            return
        view = build_view(self._config, self._runtime_endpoints())
        number = self.generation + 1
        previous = self._current.translator if self._current else None
        self._current = _Generation(number, view, MeshTranslator(view, previous))
        self.status = replace(self.status, snapshot_problems=())
        log.info("published generation %d", number)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _schedule_publish(self) -> None:
        """Coalesce bursts (a folder save, a dozen replicas starting) into one push."""
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.get_running_loop().create_task(self._publish_after_quiet())

    async def _publish_after_quiet(self) -> None:
        await asyncio.sleep(self._debounce_seconds)
        self.publish_now()

    def _runtime_endpoints(self) -> dict[str, list[Endpoint]]:
        grouped: dict[str, list[Endpoint]] = {}
        for (hostname, _key), endpoint in sorted(self._endpoints.items()):
            grouped.setdefault(hostname, []).append(endpoint)
        return grouped
