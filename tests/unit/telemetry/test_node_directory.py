"""The node directory knows connected proxies, and gone ones for a while."""

from __future__ import annotations

from dataclasses import replace

from pilotfish.model.proxy import ProxyNode
from pilotfish.telemetry.nodes import NodeDirectory

NODE = ProxyNode(id="web-0", service="web", inbound_port=15006)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_connected_nodes_by_id_and_inbound_address() -> None:
    directory = NodeDirectory()
    assert directory.get("web-0") is None
    directory.connected(NODE)
    assert directory.get("web-0") == NODE
    assert directory.by_inbound_address("127.0.0.1", 15006) == NODE
    assert directory.by_inbound_address("127.0.0.1", 15007) is None
    assert directory.connected_nodes() == [NODE]


def test_a_gone_node_is_known_for_the_linger_time_only() -> None:
    clock = Clock()
    directory = NodeDirectory(linger_seconds=300, clock=clock)
    directory.connected(NODE)
    directory.disconnected(NODE)
    assert directory.connected_nodes() == []
    clock.now += 299
    assert directory.get("web-0") == NODE
    assert directory.by_inbound_address("127.0.0.1", 15006) == NODE
    clock.now += 2
    assert directory.get("web-0") is None
    assert directory.by_inbound_address("127.0.0.1", 15006) is None


def test_a_reconnect_overlapping_the_old_stream_stays_connected() -> None:
    clock = Clock()
    directory = NodeDirectory(linger_seconds=1, clock=clock)
    newer = replace(NODE, labels={"version": "v2"})
    directory.connected(NODE)
    directory.connected(newer)
    directory.disconnected(NODE)  # the old stream's close arrives late
    clock.now += 10
    assert directory.get("web-0") == newer


def test_an_inbound_port_taken_by_another_proxy_names_the_new_one() -> None:
    directory = NodeDirectory()
    directory.connected(NODE)
    directory.disconnected(NODE)
    other = ProxyNode(id="api-0", service="api", inbound_port=15006)
    directory.connected(other)
    assert directory.by_inbound_address("127.0.0.1", 15006) == other
    assert directory.get("web-0") == NODE


def test_expired_nodes_are_forgotten() -> None:
    clock = Clock()
    directory = NodeDirectory(linger_seconds=5, clock=clock)
    for n in range(100):
        node = ProxyNode(id=f"web-{n}", inbound_port=20000 + n)
        directory.connected(node)
        directory.disconnected(node)
    clock.now += 10
    directory.connected(NODE)  # any change looks at the clock
    assert len(directory._gone) == 0
    assert len(directory._by_inbound) == 1


def test_a_transparent_node_is_found_by_its_replica_address_and_app_port() -> None:
    # Its callers' upstream is the replica's own address and port (iptables redirects it).
    node = replace(
        NODE, id="web-1", bind_address="10.250.0.2", app_port=8080, interception="transparent"
    )
    directory = NodeDirectory()
    directory.connected(node)
    assert directory.by_inbound_address("10.250.0.2", 8080) == node
    assert directory.by_inbound_address("10.250.0.2", 15006) is None
