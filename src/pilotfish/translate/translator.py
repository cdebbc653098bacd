"""Translation without a cache: a view and a proxy in, that proxy's xDS messages out.

The control plane builds snapshots through ``SnapshotCache`` with ``GENERATORS``; this runs
the same generators directly, for checks (preflight), tools and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.snapshot import MeshGenerator, NodeGenerator, ServiceGenerator, type_urls
from pilotfish.translate.generators import GENERATORS, TranslationContext

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class ProxyResources:
    """Everything one proxy needs, by type URL (in push order)."""

    by_type: Mapping[str, tuple[Message, ...]] = field(default_factory=dict)

    def of_type(self, type_url: str) -> tuple[Message, ...]:
        return self.by_type.get(type_url, ())

    def _typed(self, type_url: str, _kind: type[M]) -> tuple[M, ...]:
        return cast(tuple[M, ...], self.of_type(type_url))

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return self._typed(type_urls.CLUSTER, Cluster)

    @property
    def load_assignments(self) -> tuple[ClusterLoadAssignment, ...]:
        return self._typed(type_urls.ENDPOINT, ClusterLoadAssignment)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._typed(type_urls.LISTENER, Listener)

    @property
    def routes(self) -> tuple[RouteConfiguration, ...]:
        return self._typed(type_urls.ROUTE, RouteConfiguration)


class MeshTranslator:
    """Runs every generator that applies to a node; one context (and so one destination
    index) per view, whatever the number of nodes."""

    def __init__(self, view: MeshView) -> None:
        self._context = TranslationContext(view)

    def resources_for(self, node: ProxyNode) -> ProxyResources:
        context = self._context
        by_type: dict[str, list[Message]] = {}
        for generator in GENERATORS:
            if node.kind not in generator.kinds:
                continue
            found = by_type.setdefault(generator.type_url, [])
            if isinstance(generator, MeshGenerator):
                found.extend(generator.build(context))
            elif isinstance(generator, ServiceGenerator):
                services = context.view.services
                for hostname in sorted(services):
                    found.extend(generator.build(context, services[hostname]))
            elif isinstance(generator, NodeGenerator):
                found.extend(generator.build(context, node))
        ordered = sorted(by_type.items(), key=lambda item: type_urls.push_rank(item[0]))
        return ProxyResources({t: tuple(messages) for t, messages in ordered})
