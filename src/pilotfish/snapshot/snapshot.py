"""Immutable, versioned sets of xDS resources for one proxy, and how two of them differ.

A resource is packed into ``Any`` once and shared: the packing cache is keyed by content, so
200 proxies that see the same 1000 clusters hold 1000 ``Any`` objects, not 200,000.

A snapshot may be made of layers (what every proxy of its kind shares, then what the proxy
owns); the comparison between two snapshots then goes layer by layer, and the comparison of
two shared layers is made once for every stream (``ChangeMemo``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from pilotfish.snapshot import type_urls
from pilotfish.snapshot.references import Reference, references_of

_VERSION_HEX_DIGITS = 16
_DIGEST_MASK = (1 << 64) - 1

ByType = Mapping[str, Mapping[str, "Resource"]]
Dangling = tuple[str, str, str, str]
"""A reference to a missing resource: (type, name, wanted type, wanted name)."""


@dataclass(frozen=True, eq=False)
class Resource:
    """One packed resource. ``version`` is a hash of its content, so equal content, equal version.

    ``references`` are the (type_url, name) pairs it needs, found once at packing time so the
    consistency check never has to unpack anything.
    """

    name: str
    version: str
    any: any_pb2.Any
    references: tuple[Reference, ...] = ()
    # This (name, version) pair's share of a set version: see ``version_of_resources``.
    pair_digest: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        pair = hashlib.sha256(f"{self.name}\0{self.version}".encode()).digest()
        object.__setattr__(self, "pair_digest", int.from_bytes(pair[:8], "big"))


def version_of_resources(resources: Iterable[Resource]) -> str:
    """A version for a set of resources: the sum of their (name, version) digests.

    A sum is independent of order and composes: the version of a proxy's clusters is the
    shared clusters' sum, minus those it replaces, plus its own, with no need to go over
    thousands of shared clusters again for each proxy.
    """
    return digest_version(sum(r.pair_digest for r in resources))


def digest_version(total: int) -> str:
    """The version string of a sum of pair digests."""
    return f"{total & _DIGEST_MASK:016x}"


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_HEX_DIGITS]


def name_of(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name"))  # noqa: B009 - every other xDS type has ``name``


class PackingCache:
    """Content-addressed store of packed resources, bounded by entry count (least recently used
    leaves first). Keys are a digest of (type, bytes) rather than the bytes themselves, so the
    cache does not hold a second copy of every serialized message."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, Resource] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def pack(self, type_url: str, message: Message) -> Resource:
        serialized = message.SerializeToString(deterministic=True)
        digest = hashlib.sha256(type_url.encode() + b"\0" + serialized).digest()
        cached = self._entries.get(digest)
        if cached is not None:
            self._entries.move_to_end(digest)
            self.hits += 1
            return cached
        self.misses += 1
        resource = Resource(
            name=name_of(message),
            version=digest.hex()[:_VERSION_HEX_DIGITS],
            any=any_pb2.Any(type_url=type_url, value=serialized),
            references=references_of(message),
        )
        self._entries[digest] = resource
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return resource


def find_dangling(resources: ByType, lookup: ByType) -> list[Dangling]:
    """References of ``resources`` that ``lookup`` cannot satisfy."""
    return [
        (type_url, resource.name, wanted_type, wanted_name)
        for type_url, named in resources.items()
        for resource in named.values()
        for wanted_type, wanted_name in resource.references
        if wanted_name not in lookup.get(wanted_type, _EMPTY)
    ]


@dataclass(frozen=True, eq=False)
class Layer:
    """Packed resources of one layer (what proxies of a kind share, or what one proxy owns),
    with what is worked out once per layer: per type the sum behind ``version_of_resources``,
    the names given twice, the references missing within the layer, and a digest."""

    by_type: Mapping[str, Mapping[str, Resource]]
    sums: Mapping[str, int]
    duplicates: tuple[Reference, ...]
    dangling: tuple[Dangling, ...]
    digest: str


def layer_digest(sums: Mapping[str, int]) -> str:
    """A layer's digest from its per-type sums of (name, version) digests."""
    return _short_hash(
        "\n".join(f"{t}\0{digest_version(s)}" for t, s in sorted(sums.items())).encode()
    )


def make_layer(
    by_type: Mapping[str, Mapping[str, Resource]], duplicates: Iterable[Reference] = ()
) -> Layer:
    frozen = {t: named for t, named in by_type.items() if named}
    sums = {t: sum(r.pair_digest for r in named.values()) for t, named in frozen.items()}
    return Layer(
        by_type=frozen,
        sums=sums,
        duplicates=tuple(duplicates),
        dangling=tuple(find_dangling(frozen, frozen)),
        digest=layer_digest(sums),
    )


class Overlay(Mapping[str, Resource]):
    """A proxy's resources of one type: its own over the shared ones, without copying the
    shared thousands for each of hundreds of proxies."""

    __slots__ = ("_base", "_length", "_top")

    def __init__(self, base: Mapping[str, Resource], top: Mapping[str, Resource]) -> None:
        self._base = base
        self._top = top
        self._length = len(base) + sum(1 for name in top if name not in base)

    def __getitem__(self, name: str) -> Resource:
        found = self._top.get(name)
        return found if found is not None else self._base[name]

    def get(self, name: str, default: Resource | None = None) -> Resource | None:  # type: ignore[override]
        found = self._top.get(name)
        if found is not None:
            return found
        return self._base.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._top or name in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._top
        yield from (name for name in self._base if name not in self._top)

    def __len__(self) -> int:
        return self._length


class ChangeMemo:
    """Remembers the last few comparisons and selections: all streams of one generation ask
    the same ones."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._known: OrderedDict[tuple[int, int], tuple[object, object, tuple[str, ...]]] = (
            OrderedDict()
        )
        self._selections: OrderedDict[tuple[int, frozenset[str]], tuple[object, Selection]] = (
            OrderedDict()
        )
        self._names: OrderedDict[tuple[int, str], tuple[object, frozenset[str]]] = OrderedDict()

    def names_of(self, available: Mapping[str, Resource]) -> frozenset[str]:
        key = (id(available), _ALL)
        known = self._names.get(key)
        if known is not None and known[0] is available:
            return known[1]
        names = frozenset(available)
        self._names[key] = (available, names)
        if len(self._names) > self._size:
            self._names.popitem(last=False)
        return names

    def selection(self, available: Mapping[str, Resource], names: frozenset[str]) -> Selection:
        key = (id(available), names)
        known = self._selections.get(key)
        if known is not None and known[0] is available:
            self._selections.move_to_end(key)
            return known[1]
        selected = select(available, names)
        self._selections[key] = (available, selected)  # holding it keeps its id from reuse
        if len(self._selections) > self._size:
            self._selections.popitem(last=False)
        return selected

    def changed_names(
        self, old: Mapping[str, Resource], new: Mapping[str, Resource]
    ) -> tuple[str, ...]:
        if old is new:
            return ()
        key = (id(old), id(new))
        known = self._known.get(key)
        if known is not None and known[0] is old and known[1] is new:
            return known[2]
        names = changed_names(old, new)
        self._known[key] = (old, new, names)  # holding both keeps their ids from being reused
        if len(self._known) > self._size:
            self._known.popitem(last=False)
        return names


@dataclass(frozen=True, eq=False)
class Selection:
    """Resources of one type picked by name, in name order, and the version of that set."""

    resources: tuple[Resource, ...]
    version: str


def select(available: Mapping[str, Resource], names: frozenset[str]) -> Selection:
    """The resources of ``names`` that exist, in name order."""
    chosen = tuple(available[name] for name in sorted(names) if name in available)
    return Selection(chosen, version_of_resources(chosen))


def changed_names(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> tuple[str, ...]:
    """Names added, removed or changed in version between two resource sets of one type."""
    if old is new:
        return ()
    return tuple(
        name
        for name, resource in new.items()
        if (before := old.get(name)) is None or before.version != resource.version
    ) + tuple(name for name in old if name not in new)


_EMPTY: Mapping[str, Resource] = MappingProxyType({})
_ALL = "*"


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything one proxy should have, by type URL (in push order) then resource name."""

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    # Names that appeared more than once while building; the mapping keeps the last one.
    duplicate_names: tuple[Reference, ...] = ()
    dangling: tuple[Dangling, ...] = ()
    _type_versions: Mapping[str, str] = field(default_factory=dict, repr=False)
    # For types built from a shared layer plus the proxy's own resources: (shared, own).
    _layers: Mapping[str, tuple[Mapping[str, Resource], Mapping[str, Resource]]] = field(
        default_factory=dict, repr=False
    )
    # Shared by every snapshot of one cache, so that streams comparing the same pair of
    # shared layers compare them once.
    _memo: ChangeMemo | None = field(default=None, repr=False)

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        """A version for one type alone, as SotW's ``version_info`` wants."""
        version = self._type_versions.get(type_url)
        return (
            version
            if version is not None
            else version_of_resources(self.of_type(type_url).values())
        )

    def select(self, type_url: str, names: frozenset[str] | None) -> Selection:
        """Resources of a type by name (``None``: all of them), in name order. Streams that
        ask the same of snapshots of one cache share one answer (the same objects)."""
        available = self.of_type(type_url)
        if names is None:
            names = self._all_names(type_url)
        if self._memo is None:
            return select(available, names)
        return self._memo.selection(available, names)

    def _all_names(self, type_url: str) -> frozenset[str]:
        layers = self._layers.get(type_url)
        if layers is None or self._memo is None:
            return frozenset(self.of_type(type_url))
        # The shared layer's names once for every proxy, plus this proxy's own.
        shared = self._memo.names_of(layers[0])
        return shared | frozenset(layers[1]) if layers[1] else shared

    def changed_names(self, previous: Snapshot, type_url: str) -> tuple[str, ...]:
        """Names of ``type_url`` that differ between ``previous`` and this snapshot.

        Layer by layer where both are layered: a name whose resource changed changed in the
        proxy's own layer or, not being its own on either side, in the shared layer. Extra
        names are harmless (callers look at each one).
        """
        if previous is self or previous.of_type(type_url) is self.of_type(type_url):
            return ()
        memo = self._memo if self._memo is not None and self._memo is previous._memo else None
        compare = memo.changed_names if memo is not None else changed_names
        old_layers = previous._layers.get(type_url)
        new_layers = self._layers.get(type_url)
        if old_layers is None or new_layers is None:
            return compare(previous.of_type(type_url), self.of_type(type_url))
        shared = compare(old_layers[0], new_layers[0])
        old_own, new_own = old_layers[1], new_layers[1]
        if old_own is new_own:
            return shared
        own = {n for n in (*old_own, *new_own) if old_own.get(n) is not new_own.get(n)}
        return (*shared, *sorted(own))


def layered_snapshot(
    shared: Layer,
    own: Layer,
    memo: ChangeMemo | None = None,
    own_dangling: Sequence[Dangling] | None = None,
    previous: tuple[Layer, Snapshot] | None = None,
) -> Snapshot:
    """A proxy's snapshot: the shared layer with its own resources over it.

    ``own_dangling``, when the caller already knows it, is what the own layer's resources
    reference and neither layer has. ``previous`` is an earlier shared layer and the snapshot
    made of it and this same ``own``: a type whose shared resources are the same mapping in
    both keeps that snapshot's mapping (the same object, so streams see at once that it did
    not change) and version.
    """
    by_type: dict[str, Mapping[str, Resource]] = {}
    duplicates = [*shared.duplicates, *own.duplicates]
    type_versions: dict[str, str] = {}
    layers: dict[str, tuple[Mapping[str, Resource], Mapping[str, Resource]]] = {}
    for type_url in sorted({*shared.by_type, *own.by_type}, key=type_urls.push_rank):
        common = shared.by_type.get(type_url, _EMPTY)
        mine = own.by_type.get(type_url, _EMPTY)
        if previous is not None and previous[0].by_type.get(type_url, _EMPTY) is common:
            before = previous[1]
            by_type[type_url] = before.resources[type_url]
            type_versions[type_url] = before._type_versions[type_url]
            if type_url in before._layers:
                layers[type_url] = before._layers[type_url]
            duplicates.extend((type_url, name) for name in mine if name in common)
            continue
        total = shared.sums.get(type_url, 0)
        if not mine:
            by_type[type_url] = common  # no copy: streams can compare it by identity
            type_versions[type_url] = digest_version(total)
            continue
        replaced = [name for name in mine if name in common]
        duplicates.extend((type_url, name) for name in replaced)
        total -= sum(common[name].pair_digest for name in replaced)
        total += own.sums.get(type_url, 0)
        type_versions[type_url] = digest_version(total)
        by_type[type_url] = Overlay(common, mine) if common else mine
        layers[type_url] = (common, mine)
    # A shared resource the proxy replaces with its own is not served: neither are its
    # references (the replacement's own references are checked with the proxy's layer).
    dangling = [
        d
        for d in shared.dangling
        if d[1] not in own.by_type.get(d[0], _EMPTY) and d[3] not in by_type.get(d[2], _EMPTY)
    ]
    dangling.extend(find_dangling(own.by_type, by_type) if own_dangling is None else own_dangling)
    return Snapshot(
        version=_short_hash(f"{shared.digest}\0{own.digest}".encode()),
        resources=MappingProxyType(by_type),
        duplicate_names=tuple(sorted(set(duplicates))),
        dangling=tuple(dangling),
        _type_versions=type_versions,
        _layers=layers,
        _memo=memo,
    )


def snapshot_from_resources(by_type: ByType, duplicates: Iterable[Reference] = ()) -> Snapshot:
    """Assemble already packed resources into a versioned one-layer snapshot."""
    frozen = {
        type_url: MappingProxyType(dict(named))
        for type_url, named in sorted(
            by_type.items(), key=lambda item: type_urls.push_rank(item[0])
        )
    }
    layer = make_layer(frozen, duplicates)
    return Snapshot(
        version=layer.digest,
        resources=MappingProxyType(frozen),
        duplicate_names=tuple(sorted(set(layer.duplicates))),
        dangling=layer.dangling,
        _type_versions={t: digest_version(s) for t, s in layer.sums.items()},
    )


class HasMessagesByType(Protocol):
    @property
    def by_type(self) -> Mapping[str, Sequence[Message]]: ...


def pack_messages(
    by_type: Mapping[str, Sequence[Message]], packing: PackingCache
) -> tuple[dict[str, dict[str, Resource]], list[Reference]]:
    """Pack messages by type; a name given twice keeps the last one and is reported."""
    packed: dict[str, dict[str, Resource]] = {}
    duplicates: list[Reference] = []
    for type_url, messages in by_type.items():
        named = packed.setdefault(type_url, {})
        for message in messages:
            resource = packing.pack(type_url, message)
            if resource.name in named:
                duplicates.append((type_url, resource.name))
            named[resource.name] = resource
    return packed, duplicates


def make_snapshot(
    resources: HasMessagesByType | Mapping[str, Sequence[Message]],
    packing: PackingCache | None = None,
) -> Snapshot:
    """Pack and version one proxy's messages in one layer, as they are (no reuse).

    Does not check consistency: call ``check_consistency`` before publishing. The control
    plane builds snapshots through ``SnapshotCache``; this is for tests, tools and checks.
    """
    by_type = resources if isinstance(resources, Mapping) else resources.by_type
    packed, duplicates = pack_messages(by_type, PackingCache() if packing is None else packing)
    return snapshot_from_resources(packed, duplicates)
