"""The control plane's heart: inputs -> view -> ``SnapshotCache.publish(view)``.

Inputs are the last good config and the registries; a change in either starts a new
generation (debounced), and each proxy's snapshot is a cache lookup. The xDS server reaches
this class only through ``SnapshotSource`` (``generation``, ``wait_for_change``,
``snapshot_for``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from pilotfish.discovery import ConfigRegistry, Registry, build_view, registry_services
from pilotfish.errors import PilotfishError
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import MeshView, Service
from pilotfish.snapshot import CacheStats, Snapshot, SnapshotCache
from pilotfish.translate import GENERATORS, TranslationContext

log = logging.getLogger("pilotfish.controller")

# Generations whose publish time is kept: a stream far enough behind to take an older one
# only makes its push-time sample missing, not wrong.
_PUBLISH_TIMES_KEPT = 16


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


def new_snapshot_cache() -> SnapshotCache[TranslationContext]:
    return SnapshotCache(GENERATORS, TranslationContext)


class MeshController:
    """Implements ``pilotfish.xds.SnapshotSource``."""

    def __init__(
        self,
        registries: Sequence[Registry] = (),
        debounce_seconds: float = 0.02,
        cache: SnapshotCache[TranslationContext] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config: ConfigRegistry | None = None
        self._registries = tuple(registries)
        self._cache = cache if cache is not None else new_snapshot_cache()
        # Set (and replaced) on every publish. An event, not a condition: hundreds of waiting
        # streams wake at once instead of taking a lock one after the other.
        self._changed = asyncio.Event()
        self._debounce_seconds = debounce_seconds
        self._publish_task: asyncio.Task[None] | None = None
        self._clock = clock
        self._last_publish: float | None = None
        """When the last publish began (on ``clock``): the next waits out the window."""
        self._problems_seen: object = None
        self.status = ConfigStatus()
        self.rejections = 0
        """Config loads rejected (the last good config kept serving), since start."""
        self._published_at: OrderedDict[int, float] = OrderedDict()
        self._unsubscribe = [r.subscribe(self._schedule_publish) for r in self._registries]

    # --- inputs -----------------------------------------------------------------------------

    def apply_config(self, config: MeshConfig | None, diagnostics: Iterable[Diagnostic]) -> bool:
        """Take a freshly loaded config; a rejected one (None) leaves the last good one live."""
        diagnostics = tuple(diagnostics)
        now = time.time()
        if config is None:
            self.rejections += 1
            self.status = replace(self.status, rejected_at=now, diagnostics=diagnostics)
            for diagnostic in diagnostics:
                if diagnostic.severity == "error":
                    log.error("config rejected, still serving the last good one: %s", diagnostic)
            return False
        self._config = ConfigRegistry(config)
        self.status = ConfigStatus(applied_at=now, diagnostics=diagnostics)
        for diagnostic in diagnostics:
            log.warning("%s", diagnostic)
        self._schedule_publish()
        return True

    @property
    def publish_pending(self) -> bool:
        return self._publish_task is not None and not self._publish_task.done()

    @property
    def config(self) -> MeshConfig | None:
        return self._config.config if self._config is not None else None

    @property
    def view(self) -> MeshView | None:
        return self._cache.view

    def registry_services(self) -> dict[str, Service]:
        """Services that registries other than the config declare (validation accepts
        routes to them)."""
        return registry_services(self._registries)

    def cache_stats(self) -> CacheStats:
        return self._cache.stats()

    # --- SnapshotSource ----------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._cache.generation

    async def wait_for_change(self, seen_generation: int) -> int:
        while self.generation == seen_generation:
            await self._changed.wait()
        return self.generation

    def published_at(self, generation: int) -> float | None:
        """When the publish of ``generation`` began (``time.monotonic``); None for one too
        old."""
        return self._published_at.get(generation)

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        """This generation's snapshot for ``node``; its last good one if this one is broken."""
        snapshot = self._cache.snapshot_for(node)
        problems = self._cache.problems
        seen = (self.generation, tuple(sorted(problems.items())))
        if seen != self._problems_seen:
            self._problems_seen = seen
            self.status = replace(
                self.status,
                snapshot_problems=tuple(
                    f"{node_id}: {p}" for node_id, found in problems.items() for p in found
                ),
            )
        return snapshot

    # --- publishing ---------------------------------------------------------------------------

    def publish_now(self) -> None:
        """Start a new generation from the current config and registries, and wake the streams."""
        if self._publish_task is not None and self._publish_task is not asyncio.current_task():
            self._publish_task.cancel()  # this publish includes whatever it was waiting for
        self._publish_task = None
        if self._config is None:
            return
        # From the start: push and convergence times include building the view.
        started = time.monotonic()
        self._last_publish = self._clock()
        number = self._cache.publish(build_view(self._config, registries=self._registries))
        self._published_at[number] = started
        while len(self._published_at) > _PUBLISH_TIMES_KEPT:
            self._published_at.popitem(last=False)
        self.status = replace(self.status, snapshot_problems=())
        log.info("published generation %d", number)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Stop listening to the registries (they may outlive this controller)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _schedule_publish(self) -> None:
        """Coalesce bursts (a folder save, a dozen replicas starting) into one push."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self.generation == 0:
                return  # set up before serving: the first publish reads every registry
            raise PilotfishError(
                "a registry changed outside the control plane's event loop; "
                "change registries from the loop that runs it"
            ) from None
        if self._publish_task is None or self._publish_task.done():
            delay = publish_delay(self._last_publish, self._clock(), self._debounce_seconds)
            self._publish_task = loop.create_task(self._publish_after(delay))

    async def _publish_after(self, delay: float) -> None:
        # Even without a delay, the publish waits for the loop's next turn: every change made
        # in the same turn as the first (a registry updating ten services at once) is in it.
        await asyncio.sleep(delay)
        self.publish_now()


def publish_delay(last_publish: float | None, now: float, debounce: float) -> float:
    """How long a change waits to be published: not at all after a quiet spell; otherwise
    until ``debounce`` after the last publish, so that a burst is one push per window.

    The first change of a burst goes out at once and the rest of the burst follows together,
    at most ``debounce`` later: a lone change does not pay the window, a storm still cannot
    push more than once per window.
    """
    if last_publish is None:
        return 0.0
    return max(0.0, last_publish + debounce - now)
