from __future__ import annotations

from xds_fakes import CDS, EDS

from pilotfish.model.proxy import ProxyNode
from pilotfish.xds import StreamInfo, SyncStatus, TypeStatus
from pilotfish.xds.status_board import ProxyStatusBoard


def test_status_of_a_type() -> None:
    assert TypeStatus(CDS, "v1", None, None, None).status is SyncStatus.NOT_SENT
    assert TypeStatus(CDS, "v2", "v2", "v1", None).status is SyncStatus.STALE
    assert TypeStatus(CDS, "v2", "v2", "v2", None).status is SyncStatus.SYNCED
    assert TypeStatus(CDS, "v2", "v2", "v1", "bad").status is SyncStatus.NACKED


def test_board_lists_open_streams_with_their_types() -> None:
    board = ProxyStatusBoard(clock=lambda: 42.0)
    node = ProxyNode(id="gw", kind="gateway")
    statuses = [TypeStatus(CDS, "v1", "v1", "v1", None), TypeStatus(EDS, "e", "e", None, "no")]
    stream = StreamInfo(7, node, "delta", lambda: statuses)
    board.stream_opened(stream)
    board.snapshot_applied(stream, 1)
    assert board.to_json() == [
        {
            "node_id": "gw",
            "status": "NACKED",
            "kind": "gateway",
            "service": None,
            "connected_since": 42.0,
            "stream": "delta",
            "types": {
                "CDS": {
                    "status": "SYNCED",
                    "snapshot_version": "v1",
                    "sent_version": "v1",
                    "acked_version": "v1",
                    "nack": None,
                },
                "EDS": {
                    "status": "NACKED",
                    "snapshot_version": "e",
                    "sent_version": "e",
                    "acked_version": None,
                    "nack": "no",
                },
            },
        }
    ]
    board.stream_closed(stream)
    assert board.proxies() == []
    assert board.find("gw") is None
