from __future__ import annotations

import asyncio

from xds_fakes import CDS, EDS

from pilotfish.model.proxy import ProxyNode
from pilotfish.xds import NackReceived, SendResponse, StreamInfo, SyncStatus, TypeStatus
from pilotfish.xds.status_board import ProxyStatusBoard

STEP = 5.0  # bounds each wait so that a hang fails the test instead of stalling the suite


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


def sent(type_url: str, nonce: str) -> SendResponse:
    return SendResponse(type_url, "v" + nonce, nonce, ())


async def test_a_wait_ends_when_every_stream_took_the_generation_and_answered() -> None:
    board = ProxyStatusBoard()
    early = StreamInfo(1, ProxyNode(id="early"), "sotw", list)
    late = StreamInfo(2, ProxyNode(id="late"), "delta", list)
    for stream in (early, late):
        board.stream_opened(stream)
        board.snapshot_applied(stream, 1)
    assert board.answered(1)

    waiter = asyncio.create_task(board.wait_until_answered(2, timeout=STEP))
    board.response_sent(early, sent(CDS, "1"))
    board.snapshot_applied(early, 2)
    board.ack_received(early, sent(CDS, "1"))
    await settle()
    assert not waiter.done()  # "late" still follows generation 1

    board.snapshot_applied(late, 2)
    board.response_sent(late, sent(EDS, "1"))
    board.response_sent(late, sent(EDS, "2"))
    board.ack_received(late, sent(EDS, "1"))  # an older response: the newer is still out
    await settle()
    assert not waiter.done()

    board.nack_received(late, sent(EDS, "2"), NackReceived(EDS, "v2", "no"))
    assert await asyncio.wait_for(waiter, STEP) is True


async def test_a_closed_stream_is_not_waited_for_and_a_wait_can_time_out() -> None:
    board = ProxyStatusBoard()
    stream = StreamInfo(1, ProxyNode(id="gone"), "sotw", list)
    board.stream_opened(stream)
    assert not board.answered(1)  # no snapshot yet
    assert await board.wait_until_answered(1, timeout=0.01) is False
    waiter = asyncio.create_task(board.wait_until_answered(1, timeout=STEP))
    await settle()
    board.stream_closed(stream)
    assert await asyncio.wait_for(waiter, STEP) is True


async def settle() -> None:
    """Let every ready task run (a wait that could end would end here)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_callbacks_do_not_read_the_streams_and_a_read_shows_their_state_now() -> None:
    # Every stream's ACK and every change reach the board: those callbacks must not cost a
    # reading of the stream's types (it is read when the board is read).
    reads = 0
    statuses = [TypeStatus(CDS, "v1", "v1", None, None)]

    def read() -> list[TypeStatus]:
        nonlocal reads
        reads += 1
        return list(statuses)

    board = ProxyStatusBoard()
    stream = StreamInfo(1, ProxyNode(id="n"), "delta", read)
    board.stream_opened(stream)
    response = sent(CDS, "1")
    board.response_sent(stream, response)
    board.snapshot_applied(stream, 1)
    statuses[0] = TypeStatus(CDS, "v1", "v1", "v1", None)  # the stream took the ACK in
    board.ack_received(stream, response)
    assert reads == 0
    proxy = board.find("n")
    assert proxy is not None and proxy.overall_status is SyncStatus.SYNCED
    assert proxy.generation == 1
    assert reads == 1
