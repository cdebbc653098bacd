"""Immutable, versioned sets of xDS resources for one proxy.

Resources are packed into ``Any`` once and shared: the packing cache is keyed by content, so
200 proxies that see the same 1000 clusters hold 1000 ``Any`` objects, not 200,000.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from pilotfish.snapshot import type_urls
from pilotfish.snapshot.references import Reference, references_of

_VERSION_HEX_DIGITS = 16


class ProxyResourcesLike(Protocol):
    """What the translator hands us for one proxy (``pilotfish.translate.ProxyResources``)."""

    @property
    def clusters(self) -> Sequence[cluster_pb2.Cluster]: ...
    @property
    def load_assignments(self) -> Sequence[endpoint_pb2.ClusterLoadAssignment]: ...
    @property
    def listeners(self) -> Sequence[listener_pb2.Listener]: ...
    @property
    def routes(self) -> Sequence[route_pb2.RouteConfiguration]: ...


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


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy should have, by type URL then resource name."""

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    # Names that appeared more than once while building; the mapping keeps the last one.
    duplicate_names: tuple[Reference, ...] = field(default=())
    # References to missing resources as (type, name, wanted type, wanted name), when the
    # builder already worked them out; None means check_consistency must look itself.
    dangling: tuple[Dangling, ...] | None = field(default=None, compare=False)
    _type_versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # For types built from a shared part plus a proxy's own resources: (shared, own), so that
    # changes can be found per layer (the shared layer's comparison is made once for all).
    _layers: Mapping[str, tuple[Mapping[str, Resource], Mapping[str, Resource]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        """A version for one type alone, as SotW's ``version_info`` wants (computed once)."""
        version = self._type_versions.get(type_url)
        if version is None:
            version = version_of_resources(self.of_type(type_url).values())
            self._type_versions[type_url] = version
        return version


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_HEX_DIGITS]


_DIGEST_MASK = (1 << 64) - 1


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

    def pack(self, type_url: str, name: str, message: Message) -> Resource:
        serialized = message.SerializeToString(deterministic=True)
        digest = hashlib.sha256(type_url.encode() + b"\0" + serialized).digest()
        cached = self._entries.get(digest)
        if cached is not None:
            self._entries.move_to_end(digest)
            self.hits += 1
            return cached
        self.misses += 1
        resource = Resource(
            name=name,
            version=digest.hex()[:_VERSION_HEX_DIGITS],
            any=any_pb2.Any(type_url=type_url, value=serialized),
            references=references_of(message),
        )
        self._entries[digest] = resource
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return resource


DEFAULT_PACKING_CACHE = PackingCache()


class Packer(Protocol):
    def pack(self, type_url: str, name: str, message: Message) -> Resource: ...


Dangling = tuple[str, str, str, str]
"""A reference to a missing resource: (type, name, wanted type, wanted name)."""


def find_dangling(
    resources: Mapping[str, Mapping[str, Resource]], lookup: Mapping[str, Mapping[str, Resource]]
) -> list[Dangling]:
    """References of ``resources`` that ``lookup`` cannot satisfy."""
    return [
        (type_url, resource.name, wanted_type, wanted_name)
        for type_url, named in resources.items()
        for resource in named.values()
        for wanted_type, wanted_name in resource.references
        if wanted_name not in lookup.get(wanted_type, _EMPTY)
    ]


@dataclass(frozen=True)
class PackedLayer:
    """Packed resources of one layer (what proxies share, or what one proxy owns)."""

    by_type: dict[str, dict[str, Resource]]
    duplicates: tuple[Reference, ...]
    digest: str

    def type_sums(self) -> dict[str, int]:
        return {t: sum(r.pair_digest for r in named.values()) for t, named in self.by_type.items()}

    def dangling(
        self, lookup: Mapping[str, Mapping[str, Resource]]
    ) -> list[tuple[str, str, str, str]]:
        """References of this layer's resources that ``lookup`` cannot satisfy."""
        return [
            (type_url, resource.name, wanted_type, wanted_name)
            for type_url, named in self.by_type.items()
            for resource in named.values()
            for wanted_type, wanted_name in resource.references
            if wanted_name not in lookup.get(wanted_type, _EMPTY)
        ]


@dataclass(frozen=True)
class _SharedLayer:
    packed: PackedLayer
    type_sums: dict[str, int]  # per type, the sum behind ``version_of_resources``
    dangling: tuple[Dangling, ...]  # within the layer alone
    # One read-only view per type, handed to every snapshot that adds nothing of its own to
    # that type: streams then see the very same object and can compare by identity.
    views: dict[str, Mapping[str, Resource]]


def _pack_layer(groups: Iterable[tuple[str, Sequence[Message]]], packer: Packer) -> PackedLayer:
    by_type: dict[str, dict[str, Resource]] = {}
    duplicates: list[Reference] = []
    for type_url, messages in groups:
        named: dict[str, Resource] = {}
        for message in messages:
            name = _name_of(message)
            if name in named:
                duplicates.append((type_url, name))
            named[name] = packer.pack(type_url, name, message)
        if named:
            by_type[type_url] = named
    lines = sorted(
        f"{type_url}\0{r.name}\0{r.version}"
        for type_url, named in by_type.items()
        for r in named.values()
    )
    return PackedLayer(by_type, tuple(duplicates), _short_hash("\n".join(lines).encode()))


# The types translation produces, in push order.
_TRANSLATED_TYPES = (type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.LISTENER, type_urls.ROUTE)


def _groups(
    resources: ProxyResourcesLike, skip: ProxyResourcesLike | None = None
) -> list[tuple[str, Sequence[Message]]]:
    """Messages by type; with ``skip``, only what follows its (shared) prefix in each field."""
    fields = zip(
        _TRANSLATED_TYPES, ("clusters", "load_assignments", "listeners", "routes"), strict=True
    )
    groups: list[tuple[str, Sequence[Message]]] = []
    for type_url, attribute in fields:
        messages: Sequence[Message] = getattr(resources, attribute)
        if skip is not None:
            prefix: Sequence[Message] = getattr(skip, attribute)
            if prefix and (
                len(messages) < len(prefix) or messages[len(prefix) - 1] is not prefix[-1]
            ):
                raise ValueError(f"{attribute} do not start with the shared ones")
            messages = messages[len(prefix) :]
        groups.append((type_url, messages))
    return groups


class SharedMessagePacker:
    """Packs each message object once, for as long as this packer lives.

    Translation hands every proxy of one generation the *same* message objects for what they
    share (all outbound clusters, their assignments, the outbound routes). Recognising them by
    identity skips serializing and hashing them again for each of 200 proxies. Holding the
    message keeps its ``id`` from being reused, and the packer is dropped with its generation,
    so nothing accumulates. Messages must not be mutated once packed (translation treats its
    output as read-only).
    """

    def __init__(self, content_cache: PackingCache | None = None) -> None:
        self._content_cache = DEFAULT_PACKING_CACHE if content_cache is None else content_cache
        self._by_identity: dict[tuple[str, int], tuple[object, Resource]] = {}

    def pack_shared(self, shared: ProxyResourcesLike) -> _SharedLayer:
        """The shared part of many proxies' resources, packed and checked once."""
        key = ("shared", id(shared))
        known = self._by_identity.get(key)
        if known is not None and known[0] is shared:
            return known[1]  # type: ignore[return-value]
        packed = _pack_layer(_groups(shared), self)
        layer = _SharedLayer(
            packed,
            packed.type_sums(),
            tuple(packed.dangling(packed.by_type)),
            {t: MappingProxyType(packed.by_type.get(t, {})) for t in _TRANSLATED_TYPES},
        )
        self._by_identity[key] = (shared, layer)  # type: ignore[assignment]
        return layer

    def pack(self, type_url: str, name: str, message: Message) -> Resource:
        key = (type_url, id(message))
        known = self._by_identity.get(key)
        if known is not None and known[0] is message:
            return known[1]
        resource = self._content_cache.pack(type_url, name, message)
        self._by_identity[key] = (message, resource)
        return resource


def make_snapshot(resources: ProxyResourcesLike, cache: Packer | None = None) -> Snapshot:
    """Pack and version the translator's output. Does not check consistency: call
    ``check_consistency`` before publishing.

    With a ``SharedMessagePacker`` and resources that declare their ``shared`` part, that part
    is packed, versioned and checked once for all proxies, and only the rest per proxy.
    """
    shared = getattr(resources, "shared", None)
    if shared is not None and isinstance(cache, SharedMessagePacker):
        return layered_snapshot(cache, shared, pack_own_layer(resources, shared, cache))
    packed = _pack_layer(_groups(resources), DEFAULT_PACKING_CACHE if cache is None else cache)
    by_type = {type_url: packed.by_type.get(type_url, {}) for type_url, _ in _groups(resources)}
    return snapshot_from_resources(by_type, packed.duplicates)


def pack_own_layer(
    resources: ProxyResourcesLike, shared: ProxyResourcesLike, packer: Packer
) -> PackedLayer:
    """Pack what ``resources`` hold beyond their ``shared`` part: one proxy's own resources.

    The result can be kept and combined again with the shared part of a later generation
    (``layered_snapshot``) as long as the proxy's own resources are the same.
    """
    return _pack_layer(_groups(resources, shared), packer)


def layered_snapshot(
    packer: SharedMessagePacker, shared: ProxyResourcesLike, own: PackedLayer
) -> Snapshot:
    return _layered_snapshot(packer.pack_shared(shared), own)


def _layered_snapshot(base: _SharedLayer, own: PackedLayer) -> Snapshot:
    by_type: dict[str, Mapping[str, Resource]] = {}
    duplicates = [*base.packed.duplicates, *own.duplicates]
    type_versions: dict[str, str] = {}
    layers: dict[str, tuple[Mapping[str, Resource], Mapping[str, Resource]]] = {}
    for type_url in _TRANSLATED_TYPES:
        common = base.packed.by_type.get(type_url, {})
        mine = own.by_type.get(type_url, {})
        total = base.type_sums.get(type_url, 0)
        if not mine:
            by_type[type_url] = base.views[type_url]  # no copy: the shared resources themselves
            type_versions[type_url] = digest_version(total)
            continue
        replaced = [name for name in mine if name in common]
        duplicates.extend((type_url, name) for name in replaced)
        total -= sum(common[name].pair_digest for name in replaced)
        total += sum(resource.pair_digest for resource in mine.values())
        type_versions[type_url] = digest_version(total)
        by_type[type_url] = MappingProxyType({**common, **mine})
        layers[type_url] = (base.views[type_url], mine)
    # A shared resource the proxy replaces with its own is not served: neither are its
    # references (the replacement's own references are checked with the proxy's layer).
    dangling = [
        d
        for d in base.dangling
        if d[1] not in own.by_type.get(d[0], _EMPTY) and d[3] not in by_type.get(d[2], _EMPTY)
    ]
    dangling.extend(own.dangling(by_type))
    return Snapshot(
        version=_short_hash(f"{base.packed.digest}\0{own.digest}".encode()),
        resources=MappingProxyType(by_type),
        duplicate_names=tuple(sorted(set(duplicates))),
        dangling=tuple(dangling),
        _type_versions=type_versions,
        _layers=layers,
    )


def snapshot_from_resources(
    by_type: Mapping[str, Mapping[str, Resource]], duplicates: Iterable[Reference] = ()
) -> Snapshot:
    """Assemble already packed resources (e.g. to add secrets) into a versioned snapshot."""
    frozen = {
        type_url: MappingProxyType(dict(named))
        for type_url, named in sorted(
            by_type.items(), key=lambda item: type_urls.push_rank(item[0])
        )
    }
    lines = sorted(
        f"{type_url}\0{r.name}\0{r.version}"
        for type_url, named in frozen.items()
        for r in named.values()
    )
    return Snapshot(
        version=_short_hash("\n".join(lines).encode()),
        resources=MappingProxyType(frozen),
        duplicate_names=tuple(sorted(set(duplicates))),
    )


def _name_of(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name"))  # noqa: B009 - every other xDS type has ``name``


class _ChangeMemo:
    """Remembers the last few comparisons: all streams of one generation ask the same one."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._known: OrderedDict[tuple[int, int], tuple[object, object, tuple[str, ...]]] = (
            OrderedDict()
        )

    def changed_names(
        self, old: Mapping[str, Resource], new: Mapping[str, Resource]
    ) -> tuple[str, ...]:
        if old is new:
            return ()
        key = (id(old), id(new))
        known = self._known.get(key)
        if known is not None and known[0] is old and known[1] is new:
            return known[2]
        names = tuple(
            name
            for name, resource in new.items()
            if (before := old.get(name)) is None or before.version != resource.version
        ) + tuple(name for name in old if name not in new)
        self._known[key] = (old, new, names)  # holding both keeps their ids from being reused
        if len(self._known) > self._size:
            self._known.popitem(last=False)
        return names


_CHANGES = _ChangeMemo()


def changed_names(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> tuple[str, ...]:
    """Names added, removed or changed in version between two resource sets of one type."""
    return _CHANGES.changed_names(old, new)


def changed_names_between(old: Snapshot, new: Snapshot, type_url: str) -> tuple[str, ...]:
    """``changed_names`` for one type of two snapshots, layer by layer where both are layered.

    A name whose resource changed changed in the proxy's own layer or, not being its own on
    either side, in the shared layer; extra names are harmless (callers re-check each one).
    """
    old_layers = old._layers.get(type_url)
    new_layers = new._layers.get(type_url)
    if old_layers is None or new_layers is None:
        return changed_names(old.of_type(type_url), new.of_type(type_url))
    shared = changed_names(old_layers[0], new_layers[0])
    old_own, new_own = old_layers[1], new_layers[1]
    own = {name for name in (*old_own, *new_own) if old_own.get(name) is not new_own.get(name)}
    return (*shared, *sorted(own))
