"""What a generator is: one kind of output, the proxies it is for, and what it depends on.

``translate`` implements them; ``SnapshotCache`` runs them and keeps their outputs under
exactly the inputs they declare.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.model.services import Service

Context = TypeVar("Context")


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
    (proxies with equal keys share one output, within the inputs of ``depends_on``); by
    default, all of it. The key must follow from the node and those inputs alone: the cache
    works it out again only when the node or one of them changes."""

    name: str
    type_url: str
    depends_on: frozenset[Input]
    build: Callable[[Context, ProxyNode], Sequence[Message]]
    kinds: frozenset[ProxyKind] = ALL_KINDS
    node_key: Callable[[Context, ProxyNode], Hashable] | None = None


Generator = MeshGenerator[Context] | ServiceGenerator[Context] | NodeGenerator[Context]
