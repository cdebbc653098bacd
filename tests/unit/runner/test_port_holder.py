"""Reading who listens on a port from /proc/net/tcp tables."""

from __future__ import annotations

import socket

from pilotfish.runner.port_holder import listening_inodes, port_taken

# Two listeners on 8080 (127.0.0.1 and 0.0.0.0), a connection from 8080, a listener on 9000.
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1
   3: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1
"""

TCP6_TABLE = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A \
00000000:00000000 00:00000000 00000000     0        0 555 1
"""


def test_only_listeners_on_the_port_count() -> None:
    assert listening_inodes(TCP_TABLE, 8080) == {111, 222}
    assert listening_inodes(TCP_TABLE, 9000) == {444}
    assert listening_inodes(TCP_TABLE, 9001) == set()


def test_ipv6_tables_are_read_too() -> None:
    assert listening_inodes(TCP6_TABLE, 8080) == {555}


def test_a_free_port_is_free_and_a_held_one_names_its_reason() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert port_taken(port) is not None
        holder.listen()
        assert "in use" in (port_taken(port) or "")
    assert port_taken(port) is None
