"""The snapshot cache: from a mesh view to each proxy's consistent, versioned snapshot.

Resources come from generators, each of which says what its output depends on. The cache keeps
every generator's output, packed, under a key made of exactly those inputs; a new generation
rebuilds only what an input it depends on changed for, and everything else (packing, set
versions, the shared layers and each proxy's own layer) follows from the outputs being the same
objects as before. Adding a resource type (secrets, say) is adding a generator.

Pure: no gRPC, no asyncio. The xDS server reaches it through the controller's SnapshotSource.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Generic, TypeVar

from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.model.services import MeshView, Service
from pilotfish.snapshot import type_urls
from pilotfish.snapshot.consistency import check_consistency
from pilotfish.snapshot.snapshot import (
    ChangeMemo,
    Layer,
    PackingCache,
    Resource,
    Snapshot,
    layered_snapshot,
    make_layer,
)

log = logging.getLogger("pilotfish.snapshot")

Context = TypeVar("Context")
_Remembered = TypeVar("_Remembered")


class Input(enum.Enum):
    """What a generator's output may depend on, besides the proxy (node generators) or the
    service (service generators) it is built for."""

    CONFIG = "config"  # the MeshConfig (a new object on every reload)
    SERVICES = "services"  # the registry's set of services and their ports
    ENDPOINTS = "endpoints"  # endpoints: of the service for service generators, else all


ALL_KINDS: frozenset[ProxyKind] = frozenset({"sidecar", "gateway"})


@dataclass(frozen=True)
class MeshGenerator(Generic[Context]):
    """Output shared by every proxy of ``kinds``, built from the whole view."""

    name: str
    type_url: str
    depends_on: frozenset[Input]
    build: Callable[[Context], Sequence[Message]]
    kinds: frozenset[ProxyKind] = ALL_KINDS


@dataclass(frozen=True)
class ServiceGenerator(Generic[Context]):
    """Output shared by every proxy of ``kinds``, built service by service: only services
    whose inputs changed are built again."""

    name: str
    type_url: str
    depends_on: frozenset[Input]
    build: Callable[[Context, Service], Sequence[Message]]
    kinds: frozenset[ProxyKind] = ALL_KINDS


@dataclass(frozen=True)
class NodeGenerator(Generic[Context]):
    """Output of one proxy's own. ``node_key`` says what of the node the output depends on
    (proxies with equal keys share one output); by default, all of it."""

    name: str
    type_url: str
    depends_on: frozenset[Input]
    build: Callable[[Context, ProxyNode], Sequence[Message]]
    kinds: frozenset[ProxyKind] = ALL_KINDS
    node_key: Callable[[ProxyNode], Hashable] | None = None


Generator = MeshGenerator[Context] | ServiceGenerator[Context] | NodeGenerator[Context]


@dataclass(frozen=True, eq=False)
class _Output:
    """One generator's output for one key, packed once."""

    resources: tuple[Resource, ...]


@dataclass
class _Entry:
    output: _Output
    last_used: int


@dataclass(frozen=True)
class GeneratorStats:
    hits: int
    misses: int


@dataclass(frozen=True)
class CacheStats:
    generation: int
    entries: int
    generators: Mapping[str, GeneratorStats]
    packing_hits: int
    packing_misses: int

    def to_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "entries": self.entries,
            "generators": {
                name: {"hits": s.hits, "misses": s.misses} for name, s in self.generators.items()
            },
            "packing": {"hits": self.packing_hits, "misses": self.packing_misses},
        }


class _Tokens:
    """Small integers standing for the inputs of a view: a token changes exactly when its
    input does, so output keys are cheap to make and never confuse two configs."""

    def __init__(self) -> None:
        self._counter = 0
        self.config = 0
        self.services = 0
        self.endpoints = 0
        self.service: dict[str, int] = {}
        self.service_endpoints: dict[str, int] = {}
        self._view: MeshView | None = None

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def update(self, view: MeshView) -> None:
        old = self._view
        self._view = view
        if old is None or old.config is not view.config:
            self.config = self._next()
        if old is None or (old.services is not view.services and old.services != view.services):
            self.services = self._next()
        endpoints_changed = old is None
        service_tokens: dict[str, int] = {}
        endpoint_tokens: dict[str, int] = {}
        for hostname, service in view.services.items():
            known = self.service.get(hostname)
            same = known is not None and old is not None and old.services.get(hostname) == service
            service_tokens[hostname] = known if same and known is not None else self._next()
            before = self.service_endpoints.get(hostname)
            unchanged = (
                before is not None
                and old is not None
                and old.endpoints_of(hostname) == view.endpoints_of(hostname)
            )
            if unchanged and before is not None:
                endpoint_tokens[hostname] = before
            else:
                endpoint_tokens[hostname] = self._next()
                endpoints_changed = True
        if old is not None and set(old.endpoints) != set(view.endpoints):
            endpoints_changed = True
        if endpoints_changed:
            self.endpoints = self._next()
        self.service = service_tokens
        self.service_endpoints = endpoint_tokens

    def of(self, depends_on: frozenset[Input], hostname: str | None = None) -> tuple[int, ...]:
        tokens: list[int] = []
        if Input.CONFIG in depends_on:
            tokens.append(self.config)
        if Input.SERVICES in depends_on:
            tokens.append(self.services)
        if hostname is not None:
            tokens.append(self.service[hostname])
        if Input.ENDPOINTS in depends_on:
            tokens.append(
                self.service_endpoints[hostname] if hostname is not None else self.endpoints
            )
        return tuple(tokens)


@dataclass
class _SharedLayer:
    """A kind's shared layer, with the outputs it was made of (to reuse it per type)."""

    layer: Layer
    outputs: dict[str, tuple[_Output, ...]]


@dataclass
class _OwnLayer:
    layer: Layer
    outputs: tuple[_Output, ...]
    # The last snapshot made with this layer, and the shared layer it was made with.
    combined: tuple[Layer, Snapshot] | None = None


@dataclass
class _Generation(Generic[Context]):
    number: int
    view: MeshView
    context: Context
    shared: dict[ProxyKind, _SharedLayer] = field(default_factory=dict)
    # Per node id: the node as it last asked, and its snapshot (None: it failed its check).
    snapshots: dict[str, tuple[ProxyNode, Snapshot | None]] = field(default_factory=dict)
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)


class SnapshotCache(Generic[Context]):
    """Owns generation, packing, versions, the change memo and per-proxy layer reuse.

    ``publish(view)`` starts a generation; ``snapshot_for(node)`` builds the node's snapshot
    on first use in that generation and returns it, or the node's last good one when this one
    fails its consistency check (``problems`` then says why).
    """

    def __init__(
        self,
        generators: Sequence[Generator[Context]],
        make_context: Callable[[MeshView], Context],
        *,
        max_proxies: int = 4096,
        packing: PackingCache | None = None,
    ) -> None:
        names = [g.name for g in generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique: {names}")
        self._generators = tuple(generators)
        self._make_context = make_context
        self._max_proxies = max_proxies
        self._packing = PackingCache() if packing is None else packing
        self._memo = ChangeMemo()
        self._tokens = _Tokens()
        self._entries: dict[Hashable, _Entry] = {}
        self._hits: dict[str, int] = dict.fromkeys(names, 0)
        self._misses: dict[str, int] = dict.fromkeys(names, 0)
        self._current: _Generation[Context] | None = None
        self._previous_shared: dict[ProxyKind, _SharedLayer] = {}
        self._own: OrderedDict[str, _OwnLayer] = OrderedDict()
        self._node_tokens: OrderedDict[str, tuple[ProxyNode, int]] = OrderedDict()
        self._node_counter = 0
        self._last_good: OrderedDict[str, tuple[ProxyNode, Snapshot]] = OrderedDict()

    # --- generations -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._current.number if self._current is not None else 0

    @property
    def view(self) -> MeshView | None:
        return self._current.view if self._current is not None else None

    def publish(self, view: MeshView) -> int:
        """Start a new generation from ``view``; snapshots are built when first asked for."""
        number = self.generation + 1
        if self._current is not None:
            self._previous_shared = self._current.shared
        self._tokens.update(view)
        # Outputs unused for a whole generation belong to configs, services or proxies that
        # are gone: dropping them bounds the cache by what the mesh holds now.
        stale = [k for k, e in self._entries.items() if e.last_used < number - 1]
        for key in stale:
            del self._entries[key]
        self._current = _Generation(number, view, self._make_context(view))
        return number

    @property
    def problems(self) -> Mapping[str, tuple[str, ...]]:
        """Per node id, why its snapshot of this generation was not served."""
        return MappingProxyType(self._current.problems) if self._current is not None else {}

    def stats(self) -> CacheStats:
        return CacheStats(
            generation=self.generation,
            entries=len(self._entries),
            generators={
                name: GeneratorStats(self._hits[name], self._misses[name]) for name in self._hits
            },
            packing_hits=self._packing.hits,
            packing_misses=self._packing.misses,
        )

    # --- lookups -----------------------------------------------------------------------------

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        current = self._current
        if current is None:
            return None
        cached = current.snapshots.get(node.id)
        if cached is None or cached[0] != node:
            cached = (node, self._checked_snapshot(current, node))
            current.snapshots[node.id] = cached
        snapshot = cached[1]
        if snapshot is None:
            # Only a snapshot made for this very node: a replaced replica keeps its id but
            # listens on other ports, so its predecessor's snapshot would be wrong for it.
            last_good = self._last_good.get(node.id)
            return last_good[1] if last_good is not None and last_good[0] == node else None
        self._last_good[node.id] = (node, snapshot)
        self._remember(self._last_good, node.id)
        return snapshot

    def _remember(self, table: OrderedDict[str, _Remembered], node_id: str) -> None:
        table.move_to_end(node_id)
        while len(table) > self._max_proxies:
            table.popitem(last=False)

    def _checked_snapshot(self, current: _Generation[Context], node: ProxyNode) -> Snapshot | None:
        try:
            snapshot: Snapshot | None = self._assemble(current, node)
            assert snapshot is not None
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
            return None
        current.problems.pop(node.id, None)
        return snapshot

    def _assemble(self, current: _Generation[Context], node: ProxyNode) -> Snapshot:
        shared = self._shared_layer(current, node.kind).layer
        own = self._own_layer(current, node)
        if own.combined is None or own.combined[0] is not shared:
            own.combined = (shared, layered_snapshot(shared, own.layer, self._memo))
        # Made of the same layers as last time, it is the same snapshot (same object).
        return own.combined[1]

    # --- layers ------------------------------------------------------------------------------

    def _shared_layer(self, current: _Generation[Context], kind: ProxyKind) -> _SharedLayer:
        known = current.shared.get(kind)
        if known is not None:
            return known
        outputs: dict[str, list[_Output]] = {}
        for generator in self._generators:
            if kind not in generator.kinds or isinstance(generator, NodeGenerator):
                continue
            found = outputs.setdefault(generator.type_url, [])
            if isinstance(generator, MeshGenerator):
                found.append(self._output(generator, (), partial(generator.build, current.context)))
            else:
                for hostname in sorted(current.view.services):
                    service = current.view.services[hostname]
                    found.append(
                        self._output(
                            generator,
                            (hostname,),
                            partial(generator.build, current.context, service),
                            hostname,
                        )
                    )
        by_type = {t: tuple(found) for t, found in outputs.items()}
        layer = self._reuse_or_merge(by_type, self._previous_shared.get(kind))
        current.shared[kind] = layer
        return layer

    def _reuse_or_merge(
        self, outputs: dict[str, tuple[_Output, ...]], previous: _SharedLayer | None
    ) -> _SharedLayer:
        """Per type, the previous generation's mapping when it was made of the same outputs,
        so streams see the very same object and compare it by identity."""
        by_type: dict[str, Mapping[str, Resource]] = {}
        duplicates: list[tuple[str, str]] = []
        for type_url in sorted(outputs, key=type_urls.push_rank):
            made_of = outputs[type_url]
            before = previous.outputs.get(type_url) if previous is not None else None
            if previous is not None and before is not None and _same_outputs(before, made_of):
                by_type[type_url] = previous.layer.by_type.get(type_url, _EMPTY_TYPE)
                duplicates.extend(d for d in previous.layer.duplicates if d[0] == type_url)
                continue
            by_type[type_url] = _merge(type_url, made_of, duplicates)
        if (
            previous is not None
            and previous.outputs.keys() == outputs.keys()
            and all(_same_outputs(previous.outputs[t], made_of) for t, made_of in outputs.items())
        ):
            return previous
        layer = make_layer(by_type, duplicates, previous.layer if previous is not None else None)
        return _SharedLayer(layer, outputs)

    def _own_layer(self, current: _Generation[Context], node: ProxyNode) -> _OwnLayer:
        outputs: list[tuple[str, _Output]] = []
        node_token = self._node_token(node)
        for generator in self._generators:
            if node.kind not in generator.kinds or not isinstance(generator, NodeGenerator):
                continue
            key = generator.node_key(node) if generator.node_key is not None else node_token
            output = self._output(
                generator, (key,), partial(generator.build, current.context, node)
            )
            outputs.append((generator.type_url, output))
        made_of = tuple(o for _, o in outputs)
        known = self._own.get(node.id)
        if known is None or not _same_outputs(known.outputs, made_of):
            grouped: dict[str, list[_Output]] = {}
            for type_url, output in outputs:
                grouped.setdefault(type_url, []).append(output)
            duplicates: list[tuple[str, str]] = []
            by_type = {
                t: _merge(t, tuple(found), duplicates)
                for t, found in sorted(
                    grouped.items(), key=lambda item: type_urls.push_rank(item[0])
                )
            }
            known = _OwnLayer(make_layer(by_type, duplicates), made_of)
            self._own[node.id] = known
        self._remember(self._own, node.id)
        return known

    def _node_token(self, node: ProxyNode) -> tuple[str, int]:
        known = self._node_tokens.get(node.id)
        if known is None or known[0] != node:
            self._node_counter += 1
            known = (node, self._node_counter)
            self._node_tokens[node.id] = known
        self._remember(self._node_tokens, node.id)
        return (node.id, known[1])

    # --- outputs -----------------------------------------------------------------------------

    def _output(
        self,
        generator: Generator[Context],
        subject: tuple[Hashable, ...],
        build: Callable[[], Sequence[Message]],
        hostname: str | None = None,
    ) -> _Output:
        key = (generator.name, *subject, *self._tokens.of(generator.depends_on, hostname))
        entry = self._entries.get(key)
        if entry is not None:
            self._hits[generator.name] += 1
            entry.last_used = self.generation
            return entry.output
        self._misses[generator.name] += 1
        output = _Output(tuple(self._packing.pack(generator.type_url, m) for m in build()))
        self._entries[key] = _Entry(output, self.generation)
        return output


_EMPTY_TYPE: Mapping[str, Resource] = MappingProxyType({})


def _same_outputs(old: Sequence[_Output], new: Sequence[_Output]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _merge(
    type_url: str, outputs: Sequence[_Output], duplicates: list[tuple[str, str]]
) -> Mapping[str, Resource]:
    named: dict[str, Resource] = {}
    for output in outputs:
        for resource in output.resources:
            if resource.name in named:
                duplicates.append((type_url, resource.name))
            named[resource.name] = resource
    return MappingProxyType(named)
