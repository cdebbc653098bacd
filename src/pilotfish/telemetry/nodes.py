"""Which proxy a node id or an inbound address belongs to, as their xDS streams told us.

The access-log stream of a proxy names it by node id only; a callee's entry names its caller
by node id (the peer header); a caller's entry names its callee by address (the endpoint it
picked: a sidecar's inbound port). The directory answers all three from the nodes seen on
xDS streams. A proxy that went away stays known for ``linger_seconds``: its last entries
arrive after its xDS stream closed (Envoy flushes the access log about once a second), and its
callers' entries may name it for a while longer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pilotfish.model.proxy import ProxyNode

DEFAULT_LINGER_SECONDS = 300.0
# Churn (replicas restarting under new ids) must not grow the directory without bound.
MAX_GONE = 10_000


@dataclass
class _Entry:
    node: ProxyNode
    streams: int


class NodeDirectory:
    """Fed by the xDS streams (``connected`` / ``disconnected``), read by telemetry.

    Lookups see connected nodes and those gone less than ``linger_seconds`` ago. When two
    streams name the same node id (a proxy reconnecting opens the new stream before the old
    one is seen closing), the newest node wins and it stays connected until both closed.
    """

    def __init__(
        self,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._linger = linger_seconds
        self._clock = clock
        self._connected: dict[str, _Entry] = {}
        # Gone nodes, oldest first, with the time they went.
        self._gone: OrderedDict[str, tuple[ProxyNode, float]] = OrderedDict()
        self._by_inbound: dict[tuple[str, int], str] = {}

    def connected(self, node: ProxyNode) -> None:
        gone = self._gone.pop(node.id, None)
        entry = self._connected.get(node.id)
        previous = entry.node if entry is not None else gone[0] if gone is not None else None
        if previous is not None:
            self._forget_address(previous)  # it may come back on another port
        if entry is None:
            self._connected[node.id] = _Entry(node, 1)
        else:
            entry.node, entry.streams = node, entry.streams + 1
        address = _inbound_address(node)
        if address is not None:
            self._by_inbound[address] = node.id
        self._expire()

    def disconnected(self, node: ProxyNode) -> None:
        entry = self._connected.get(node.id)
        if entry is None:
            return
        entry.streams -= 1
        if entry.streams > 0:
            return
        del self._connected[node.id]
        self._gone[node.id] = (entry.node, self._clock())
        self._expire()

    def get(self, node_id: str) -> ProxyNode | None:
        """The node with this id, connected or gone recently; None if unknown."""
        entry = self._connected.get(node_id)
        if entry is not None:
            return entry.node
        gone = self._gone.get(node_id)
        if gone is None or self._clock() - gone[1] > self._linger:
            return None
        return gone[0]

    def by_inbound_address(self, host: str, port: int) -> ProxyNode | None:
        """The sidecar whose inbound listener is ``host:port`` (what a caller's upstream
        address is when it called a mesh endpoint)."""
        node_id = self._by_inbound.get((host, port))
        if node_id is None:
            return None
        node = self.get(node_id)
        # The port may have been handed to another proxy since.
        if node is None or _inbound_address(node) != (host, port):
            return None
        return node

    def connected_nodes(self) -> list[ProxyNode]:
        return [entry.node for entry in self._connected.values()]

    def _expire(self) -> None:
        now = self._clock()
        while self._gone:
            node_id, (_, gone_at) = next(iter(self._gone.items()))
            if now - gone_at <= self._linger and len(self._gone) <= MAX_GONE:
                break
            node, _ = self._gone.pop(node_id)
            self._forget_address(node)

    def _forget_address(self, node: ProxyNode) -> None:
        address = _inbound_address(node)
        if address is not None and self._by_inbound.get(address) == node.id:
            del self._by_inbound[address]


def _inbound_address(node: ProxyNode) -> tuple[str, int] | None:
    if node.inbound_port is None:
        return None
    if node.interception == "transparent" and node.app_port is not None:
        # Callers connect to the replica's address and app port; iptables redirects it.
        return (node.bind_address, node.app_port)
    return (node.bind_address, node.inbound_port)
