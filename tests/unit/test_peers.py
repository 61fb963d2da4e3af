"""Who owns the other end of a loopback connection (/proc/net/tcp parsing, pure), and the
real table for a real connection."""

from __future__ import annotations

import os
import socket

from sandbox_kernel.relay.peers import allowed_peer, peer_uid, proc_address, socket_owner

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
TABLE = [
    "   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 111 1 0 100 0 0 10 0",
    "   1: 0100007F:C350 0100007F:1388 01 00000000:00000000 00:00000000 00000000  1002        0 222 1 0 20 4 30 10 -1",
    "   2: 0100007F:C351 0100007F:1388 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0",
    "   3: 0200007F:C352 0100007F:1388 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1",
]


def test_proc_address_is_the_kernels_notation() -> None:
    assert proc_address("127.0.0.1", 5000) == "0100007F:1388"
    assert proc_address("127.0.0.2", 50002) == "0200007F:C352"


def test_socket_owner_finds_the_connecting_socket() -> None:
    assert socket_owner(TABLE, "0100007F:C350", "0100007F:1388") == 1002
    assert socket_owner(TABLE, "0200007F:C352", "0100007F:1388") == 0
    # TIME_WAIT (inode 0): nobody owns it any more -> unknown, which the listeners refuse.
    assert socket_owner(TABLE, "0100007F:C351", "0100007F:1388") is None
    assert socket_owner(TABLE, "0100007F:C359", "0100007F:1388") is None
    assert socket_owner([HEADER, "garbage", ""], "0100007F:C350", "0100007F:1388") is None


def test_a_real_loopback_connection_is_ours() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            conn, peer = server.accept()
            with conn:
                assert peer_uid(peer, conn.getsockname()) == os.geteuid()
                assert allowed_peer(peer, conn.getsockname())
                assert not allowed_peer(None, conn.getsockname())
                assert client.getsockname() == peer
