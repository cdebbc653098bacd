"""Where a TCP connection to a service port goes: the VirtualServices' ``tcp`` routes."""

from __future__ import annotations

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate.naming import outbound_cluster_name
from pilotfish.translate.tcp_proxy import WeightedCluster


def tcp_destinations(
    view: MeshView, node: ProxyNode, hostname: str, port: int
) -> tuple[WeightedCluster, ...]:
    """The clusters a connection from ``node`` to ``hostname:port`` is split between.

    Today the port's own cluster: VirtualService ``tcp`` routes (match by port and source,
    weighted destinations) are the protocols issue's to add here.
    """
    return (WeightedCluster(outbound_cluster_name(port, hostname)),)
