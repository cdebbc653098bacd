"""The snapshot cache: from a mesh view to each proxy's consistent, versioned snapshot.

Resources come from generators, each of which says what its output depends on. The cache keeps
every generator's output, packed, under exactly those inputs; a new generation rebuilds only
the outputs whose inputs changed, and everything after (packing, set versions, the shared
layers and each proxy's own layer) is patched with the outputs that are new, so a change costs
in proportion to what it touched. Adding a resource type (secrets, say) is adding a generator.

Pure: no gRPC, no asyncio. The xDS server reaches it through the controller's SnapshotSource.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Generic, TypeVar

from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.snapshot import type_urls
from pilotfish.snapshot.consistency import check_consistency
from pilotfish.snapshot.generators import (
    ALL_KINDS,
    Context,
    Generator,
    Input,
    MeshGenerator,
    NodeGenerator,
    ServiceGenerator,
)
from pilotfish.snapshot.references import Reference
from pilotfish.snapshot.snapshot import (
    ChangeMemo,
    Dangling,
    Layer,
    PackingCache,
    Resource,
    Snapshot,
    find_dangling,
    layer_digest,
    layered_snapshot,
    make_layer,
)

log = logging.getLogger("pilotfish.snapshot")

_Remembered = TypeVar("_Remembered")


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


# --- inputs -----------------------------------------------------------------------------------


class _Tokens:
    """Small integers standing for the inputs of a view: a token changes exactly when its
    input does, so output keys are cheap to compare and never confuse two configs."""

    def __init__(self) -> None:
        self._counter = 0
        self.config = 0
        self.services = 0
        self.endpoints = 0
        self.service: dict[str, int] = {}
        self.service_endpoints: dict[str, int] = {}
        # What the last update changed: per-service generators look at these services only.
        self.changed_hosts: frozenset[str] = frozenset()
        self.config_changed = True
        self.services_changed = True
        self._view: MeshView | None = None

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def update(self, view: MeshView) -> None:
        old = self._view
        self._view = view
        self.config_changed = old is None or old.config is not view.config
        if self.config_changed:
            self.config = self._next()
        self.services_changed = old is None or (
            old.services is not view.services and old.services != view.services
        )
        if self.services_changed:
            self.services = self._next()
        service_tokens: dict[str, int] = {}
        endpoint_tokens: dict[str, int] = {}
        changed: set[str] = set()
        for hostname, service in view.services.items():
            known = self.service.get(hostname)
            if known is None or old is None or old.services.get(hostname) != service:
                known = self._next()
                changed.add(hostname)
            service_tokens[hostname] = known
            before = self.service_endpoints.get(hostname)
            if (
                before is None
                or old is None
                or old.endpoints_of(hostname) != view.endpoints_of(hostname)
            ):
                before = self._next()
                changed.add(hostname)
            endpoint_tokens[hostname] = before
        removed = set(self.service) - set(service_tokens)
        if changed or removed or old is None:
            self.endpoints = self._next()
        self.service = service_tokens
        self.service_endpoints = endpoint_tokens
        self.changed_hosts = frozenset(changed | removed)


@dataclass(frozen=True)
class _Needs:
    """A generator's ``depends_on``, as flags (looked up for every output of every build)."""

    config: bool
    services: bool
    endpoints: bool

    @classmethod
    def of(cls, depends_on: frozenset[Input]) -> _Needs:
        return cls(
            Input.CONFIG in depends_on, Input.SERVICES in depends_on, Input.ENDPOINTS in depends_on
        )

    def tokens(self, tokens: _Tokens, hostname: str | None = None) -> tuple[int, ...]:
        found: list[int] = []
        if self.config:
            found.append(tokens.config)
        if self.services:
            found.append(tokens.services)
        if hostname is not None:
            found.append(tokens.service[hostname])
            if self.endpoints:
                found.append(tokens.service_endpoints[hostname])
        elif self.endpoints:
            found.append(tokens.endpoints)
        return tuple(found)


# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Output:
    """One generator's output for one subject (the mesh, a service, a node key), packed."""

    resources: tuple[Resource, ...]


@dataclass
class _Kept:
    tokens: tuple[int, ...]
    output: _Output
    last_used: int = 0


Slot = tuple[str, str]  # (generator name, hostname or "" for a mesh generator)


@dataclass(frozen=True, eq=False)
class _TypeLayer:
    """One type of a shared layer: its resources, their digest sum, and which output fills
    which slot (so the next generation can patch rather than rebuild)."""

    resources: dict[str, Resource]
    total: int
    slots: dict[Slot, _Output]
    duplicates: tuple[Reference, ...]


@dataclass
class _OwnLayer:
    layer: Layer
    outputs: tuple[tuple[str, _Output], ...]
    # The node the outputs were last looked up for and, per output, the input tokens of that
    # lookup and the entry it found: while the node and an output's tokens stay the same, so
    # does the output (its key is a function of the two), and the lookup is skipped.
    node: ProxyNode | None = None
    looked_up: tuple[tuple[tuple[int, ...], _Kept], ...] = ()
    # The last snapshot made with this layer, and the shared layer it was made with.
    combined: tuple[Layer, Snapshot] | None = None
    # The types this layer's resources reference; what of them the shared layer lacked, for
    # the shared layer's resources of those types it was last checked against.
    referenced_types: tuple[str, ...] = ()
    checked: tuple[tuple[Mapping[str, Resource] | None, ...], list[Dangling]] | None = None

    @classmethod
    def of(cls, layer: Layer, outputs: tuple[tuple[str, _Output], ...]) -> _OwnLayer:
        referenced = {t for _, output in outputs for r in output.resources for t, _ in r.references}
        return cls(layer, outputs, referenced_types=tuple(sorted(referenced)))


@dataclass
class _Missing:
    """What one output references that a shared layer lacks, for the shared mappings it was
    checked against (a proxy's routes name a thousand clusters: checked once per group of
    proxies and per change of the clusters, not once per proxy and generation)."""

    wanted: tuple[str, ...]  # the types the output's resources reference
    against: tuple[Mapping[str, Resource] | None, ...]
    dangling: tuple[Dangling, ...]


@dataclass
class _Generation(Generic[Context]):
    number: int
    view: MeshView
    context: Context
    shared: dict[ProxyKind, tuple[Layer, dict[str, _TypeLayer]]] = field(default_factory=dict)
    # Per node id: the node as it last asked, and its snapshot (None: it failed its check).
    snapshots: dict[str, tuple[ProxyNode, Snapshot | None]] = field(default_factory=dict)
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Kinds whose shared layer failed to build in this generation, with why: every proxy of
    # the kind gets that problem at once instead of building (and logging) it again.
    failed: dict[ProxyKind, str] = field(default_factory=dict)
    # Per node generator, the tokens of the inputs it depends on in this generation.
    node_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)


class _SharedLayerFailed(Exception):
    """The shared layer of a kind could not be built this generation (already logged)."""


class SnapshotCache(Generic[Context]):
    """Owns generations, packing, versions, the change memo and per-proxy layer reuse.

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
        self._needs = {g.name: _Needs.of(g.depends_on) for g in generators}
        self._type_of = {g.name: g.type_url for g in generators}
        self._node_generators: dict[ProxyKind, tuple[NodeGenerator[Context], ...]] = {
            kind: tuple(g for g in generators if isinstance(g, NodeGenerator) and kind in g.kinds)
            for kind in ALL_KINDS
        }
        # Per service generator, the generation whose view its outputs are up to date with.
        self._synced: dict[str, int] = {}
        self._make_context = make_context
        self._max_proxies = max_proxies
        self._packing = PackingCache() if packing is None else packing
        self._memo = ChangeMemo()
        self._tokens = _Tokens()
        # Per generator: its outputs by subject ("" for a mesh generator, a hostname, or a
        # node key), with the input tokens each was built from.
        self._kept: dict[str, dict[Hashable, _Kept]] = {name: {} for name in names}
        self._hits: dict[str, int] = dict.fromkeys(names, 0)
        self._misses: dict[str, int] = dict.fromkeys(names, 0)
        self._current: _Generation[Context] | None = None
        self._previous_shared: dict[ProxyKind, tuple[Layer, dict[str, _TypeLayer]]] = {}
        self._own: OrderedDict[str, _OwnLayer] = OrderedDict()
        self._node_tokens: OrderedDict[str, tuple[ProxyNode, int]] = OrderedDict()
        self._node_counter = 0
        self._last_good: OrderedDict[str, tuple[ProxyNode, Snapshot]] = OrderedDict()
        # Outputs of proxies' own layers and what they reference that the shared layer
        # lacks; entries go with their outputs (weakly held).
        self._missing: weakref.WeakKeyDictionary[_Output, _Missing] = weakref.WeakKeyDictionary()

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
        self._current = _Generation(number, view, self._make_context(view))
        self._current.node_inputs = {
            g.name: self._needs[g.name].tokens(self._tokens)
            for g in self._generators
            if isinstance(g, NodeGenerator)
        }
        self._drop_unused(number)
        return number

    def _drop_unused(self, number: int) -> None:
        """Outputs for services that are gone, or for node keys no proxy asked for during a
        whole generation, go: the cache holds what the mesh holds now."""
        services = self._current.view.services if self._current is not None else {}
        for generator in self._generators:
            kept = self._kept[generator.name]
            if isinstance(generator, ServiceGenerator):
                for hostname in [h for h in kept if h not in services]:
                    del kept[hostname]
            elif isinstance(generator, NodeGenerator):
                for key in [k for k, e in kept.items() if e.last_used < number - 1]:
                    del kept[key]

    @property
    def problems(self) -> Mapping[str, tuple[str, ...]]:
        """Per node id, why its snapshot of this generation was not served."""
        return MappingProxyType(self._current.problems) if self._current is not None else {}

    def stats(self) -> CacheStats:
        return CacheStats(
            generation=self.generation,
            entries=sum(len(kept) for kept in self._kept.values()),
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
        if cached is None or (cached[0] is not node and cached[0] != node):
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
        except _SharedLayerFailed as failed:
            problems = [str(failed)]
            snapshot = None
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
        shared = self._shared_layer(current, node.kind)
        own = self._own_layer(current, node)
        if own.combined is None or own.combined[0] is not shared:
            dangling = self._own_dangling(own, shared)
            own.combined = (
                shared,
                layered_snapshot(shared, own.layer, self._memo, dangling, own.combined),
            )
        # Made of the same layers as last time, it is the same snapshot (same object).
        return own.combined[1]

    def _own_dangling(self, own: _OwnLayer, shared: Layer) -> list[Dangling]:
        # A change of endpoints makes a new shared layer whose clusters and routes are the
        # same objects: what the proxy's own resources lack is then what they lacked before.
        against = tuple(shared.by_type.get(t) for t in own.referenced_types)
        if own.checked is not None and _same_mappings(own.checked[0], against):
            return own.checked[1]
        mine = own.layer.by_type
        dangling = [
            missing
            for type_url, output in own.outputs
            for missing in self._missing_from(type_url, output, shared)
            if missing[3] not in mine.get(missing[2], _EMPTY_TYPE)
        ]
        own.checked = (against, dangling)
        return dangling

    def _missing_from(self, type_url: str, output: _Output, shared: Layer) -> tuple[Dangling, ...]:
        known = self._missing.get(output)
        wanted = (
            known.wanted
            if known is not None
            else tuple(sorted({t for r in output.resources for t, _ in r.references}))
        )
        against = tuple(shared.by_type.get(t) for t in wanted)
        if known is not None and _same_mappings(known.against, against):
            return known.dangling
        found = tuple(
            (type_url, resource.name, wanted_type, wanted_name)
            for resource in output.resources
            for wanted_type, wanted_name in resource.references
            if wanted_name not in shared.by_type.get(wanted_type, _EMPTY_TYPE)
        )
        self._missing[output] = _Missing(wanted, against, found)
        return found

    # --- the shared layer of a kind ------------------------------------------------------------

    def _shared_layer(self, current: _Generation[Context], kind: ProxyKind) -> Layer:
        known = current.shared.get(kind)
        if known is not None:
            return known[0]
        failure = current.failed.get(kind)
        if failure is not None:
            raise _SharedLayerFailed(failure)
        try:
            return self._build_shared_layer(current, kind)
        except Exception as exc:
            log.exception("the shared layer of every %s failed to build", kind)
            current.failed[kind] = f"translation failed: {exc!r}"
            raise _SharedLayerFailed(current.failed[kind]) from exc

    def _build_shared_layer(self, current: _Generation[Context], kind: ProxyKind) -> Layer:
        slots: dict[str, dict[Slot, _Output]] = {}
        for generator in self._generators:
            if kind not in generator.kinds:
                continue
            if isinstance(generator, MeshGenerator):
                build = partial(generator.build, current.context)
                output = self._kept_entry(generator.name, "", build).output
                slots.setdefault(generator.type_url, {})[(generator.name, "")] = output
            elif isinstance(generator, ServiceGenerator):
                found = slots.setdefault(generator.type_url, {})
                for hostname, output in self._service_outputs(current, generator):
                    found[(generator.name, hostname)] = output
        previous_layer, previous_types = self._previous_shared.get(kind, (None, {}))
        types = {
            t: _patched(t, filled, previous_types.get(t))
            for t, filled in sorted(slots.items(), key=lambda item: type_urls.push_rank(item[0]))
        }
        layer = self._layer_of(types, previous_layer, previous_types)
        current.shared[kind] = (layer, types)
        return layer

    def _service_outputs(
        self, current: _Generation[Context], generator: ServiceGenerator[Context]
    ) -> Iterable[tuple[str, _Output]]:
        """Every service's output, in hostname order; only services whose tokens may have
        changed are looked at, unless a mesh-wide input of the generator changed."""
        kept = self._kept[generator.name]
        needs = self._needs[generator.name]
        tokens = self._tokens
        services = current.view.services
        synced = self._synced.get(generator.name)
        if synced == current.number:
            candidates: Iterable[str] = ()  # done already, for another kind of proxy
        elif synced == current.number - 1 and not (
            (needs.config and tokens.config_changed) or (needs.services and tokens.services_changed)
        ):
            candidates = tokens.changed_hosts  # what changed since the view it is up to date with
        else:
            candidates = services
        looked_at = 0
        for hostname in candidates:
            service = services.get(hostname)
            if service is not None:
                looked_at += 1
                build = partial(generator.build, current.context, service)
                self._kept_entry(generator.name, hostname, build, hostname)
        # Only once every service is done: after a failure, the next try looks again.
        self._synced[generator.name] = current.number
        self._hits[generator.name] += len(services) - looked_at
        return ((hostname, kept[hostname].output) for hostname in sorted(services))

    def _layer_of(
        self,
        types: dict[str, _TypeLayer],
        previous_layer: Layer | None,
        previous_types: dict[str, _TypeLayer],
    ) -> Layer:
        if (
            previous_layer is not None
            and types.keys() == previous_types.keys()
            and all(types[t] is previous_types[t] for t in types)
        ):
            return previous_layer
        by_type = {t: found.resources for t, found in types.items() if found.resources}
        sums = {t: types[t].total for t in by_type}
        # References only change with the resources that make them, and only names can go
        # missing: with the same names and references everywhere, the same ones dangle.
        unchanged_shape = previous_layer is not None and all(
            _same_shape(found, previous_types.get(t)) for t, found in types.items()
        )
        dangling: Sequence[Dangling] = (
            previous_layer.dangling
            if unchanged_shape and previous_layer is not None
            else find_dangling(by_type, by_type)
        )
        return Layer(
            by_type=by_type,
            sums=sums,
            duplicates=tuple(d for found in types.values() for d in found.duplicates),
            dangling=tuple(dangling),
            digest=layer_digest(sums),
        )

    # --- a proxy's own layer ------------------------------------------------------------------

    def _own_layer(self, current: _Generation[Context], node: ProxyNode) -> _OwnLayer:
        known = self._own.get(node.id)
        reusable = known is not None and (known.node is node or known.node == node)
        outputs: list[tuple[str, _Output]] = []
        looked_up: list[tuple[tuple[int, ...], _Kept]] = []
        node_token: tuple[str, int] | None = None
        for index, generator in enumerate(self._node_generators[node.kind]):
            tokens = current.node_inputs[generator.name]
            reused = known.looked_up[index] if reusable and known is not None else None
            # An entry unused for a whole generation may have been dropped: look it up again,
            # so that proxies with its key share the one kept.
            if (
                reused is not None
                and reused[0] == tokens
                and reused[1].last_used >= self.generation - 1
            ):
                entry = reused[1]
                entry.last_used = self.generation
                self._hits[generator.name] += 1
            else:
                if generator.node_key is not None:
                    key: Hashable = generator.node_key(current.context, node)
                else:
                    node_token = node_token or self._node_token(node)
                    key = node_token
                build = partial(generator.build, current.context, node)
                entry = self._kept_entry(generator.name, key, build)
            outputs.append((generator.type_url, entry.output))
            looked_up.append((tokens, entry))
        made_of = tuple(outputs)
        if known is None or not _same_outputs(
            [o for _, o in known.outputs], [o for _, o in made_of]
        ):
            grouped: dict[str, list[Resource]] = {}
            for type_url, output in outputs:
                grouped.setdefault(type_url, []).extend(output.resources)
            by_type, duplicates = _by_name(grouped)
            known = _OwnLayer.of(make_layer(by_type, duplicates), made_of)
            self._own[node.id] = known
        known.node = node
        known.looked_up = tuple(looked_up)
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

    def _kept_entry(
        self,
        name: str,
        subject: Hashable,
        build: Callable[[], Sequence[Message]],
        hostname: str | None = None,
    ) -> _Kept:
        """The entry kept for ``subject`` if it was built from the same input tokens, else
        one built now."""
        tokens = self._needs[name].tokens(self._tokens, hostname)
        kept = self._kept[name]
        entry = kept.get(subject)
        if entry is not None and entry.tokens == tokens:
            self._hits[name] += 1
            entry.last_used = self.generation
            return entry
        self._misses[name] += 1
        type_url = self._type_of[name]
        resources = tuple(self._packing.pack(type_url, m) for m in build())
        if entry is not None and _same_resources(entry.output.resources, resources):
            # Rebuilt to the very same resources (an EDS cluster whose endpoints changed):
            # the old output object, so nothing after this sees a change.
            output = entry.output
        else:
            output = _Output(resources)
        entry = _Kept(tokens, output, self.generation)
        kept[subject] = entry
        return entry


_EMPTY_TYPE: Mapping[str, Resource] = MappingProxyType({})


def _same_outputs(old: Sequence[_Output], new: Sequence[_Output]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _same_resources(old: Sequence[Resource], new: Sequence[Resource]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _same_mappings(
    old: Sequence[Mapping[str, Resource] | None], new: Sequence[Mapping[str, Resource] | None]
) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _by_name(
    grouped: Mapping[str, Sequence[Resource]],
) -> tuple[dict[str, dict[str, Resource]], list[Reference]]:
    by_type: dict[str, dict[str, Resource]] = {}
    duplicates: list[Reference] = []
    for type_url in sorted(grouped, key=type_urls.push_rank):
        named = by_type.setdefault(type_url, {})
        for resource in grouped[type_url]:
            if resource.name in named:
                duplicates.append((type_url, resource.name))
            named[resource.name] = resource
    return by_type, duplicates


def _patched(type_url: str, slots: dict[Slot, _Output], previous: _TypeLayer | None) -> _TypeLayer:
    """One type of a shared layer: the previous one itself when every slot holds the same
    output; patched where few slots changed; else merged again."""
    if previous is not None and previous.slots.keys() == slots.keys():
        changed = [s for s, output in slots.items() if previous.slots[s] is not output]
        if not changed:
            return previous
        if not previous.duplicates and len(changed) * 4 < len(slots):
            patched = _patch(previous, slots, changed)
            if patched is not None:
                return patched
    resources: dict[str, Resource] = {}
    duplicates: list[Reference] = []
    for output in slots.values():
        for resource in output.resources:
            if resource.name in resources:
                duplicates.append((type_url, resource.name))
            resources[resource.name] = resource
    total = sum(r.pair_digest for r in resources.values())
    return _TypeLayer(resources, total, dict(slots), tuple(duplicates))


def _patch(
    previous: _TypeLayer, slots: dict[Slot, _Output], changed: Sequence[Slot]
) -> _TypeLayer | None:
    """Replace the resources of the changed slots; None if that would hide a duplicate."""
    resources = dict(previous.resources)
    total = previous.total
    for slot in changed:
        for resource in previous.slots[slot].resources:
            del resources[resource.name]
            total -= resource.pair_digest
    for slot in changed:
        for resource in slots[slot].resources:
            if resource.name in resources:
                return None
            resources[resource.name] = resource
            total += resource.pair_digest
    return _TypeLayer(resources, total, dict(slots), ())


def _same_shape(found: _TypeLayer, previous: _TypeLayer | None) -> bool:
    """Same names, each with the same references, as ``previous``."""
    if previous is None:
        return False
    if found is previous:
        return True
    if found.resources.keys() != previous.resources.keys():
        return False
    old = previous.resources
    return all(r.references == old[n].references for n, r in found.resources.items())
