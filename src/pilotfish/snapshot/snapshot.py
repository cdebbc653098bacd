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


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy should have, by type URL then resource name."""

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    # Names that appeared more than once while building; the mapping keeps the last one.
    duplicate_names: tuple[Reference, ...] = field(default=())

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        """A version for one type alone, as SotW's ``version_info`` wants."""
        return version_of_resources(self.of_type(type_url).values())


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_HEX_DIGITS]


def version_of_resources(resources: Iterable[Resource]) -> str:
    """A hash over (name, version) pairs, independent of iteration order."""
    pairs = sorted((r.name, r.version) for r in resources)
    return _short_hash("\n".join(f"{name}\0{version}" for name, version in pairs).encode())


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


def make_snapshot(resources: ProxyResourcesLike, cache: PackingCache | None = None) -> Snapshot:
    """Pack and version the translator's output. Does not check consistency: call
    ``check_consistency`` before publishing."""
    packer = DEFAULT_PACKING_CACHE if cache is None else cache
    by_type: dict[str, dict[str, Resource]] = {}
    duplicates: list[Reference] = []
    groups: tuple[tuple[str, Sequence[Message]], ...] = (
        (type_urls.CLUSTER, resources.clusters),
        (type_urls.ENDPOINT, resources.load_assignments),
        (type_urls.LISTENER, resources.listeners),
        (type_urls.ROUTE, resources.routes),
    )
    for type_url, messages in groups:
        named: dict[str, Resource] = {}
        for message in messages:
            name = _name_of(message)
            if name in named:
                duplicates.append((type_url, name))
            named[name] = packer.pack(type_url, name, message)
        by_type[type_url] = named
    return snapshot_from_resources(by_type, duplicates)


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
