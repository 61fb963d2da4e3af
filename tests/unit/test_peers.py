"""Who owns the other end of a loopback connection: the sock_diag messages (pure), the real
kernel's answer for real sockets, and the gated accept loop (rate bound, refusals, log
bound) on a real loop with a stand-in peer check."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from sandbox_kernel.relay import sockdiag
from sandbox_kernel.relay.accept import GatedAcceptor, TokenBucket
from sandbox_kernel.relay.peers import PeerCheck, allowed_uids, peer_owner

LOCAL, REMOTE = ("127.0.0.1", 50000), ("127.0.0.2", 5000)


def test_the_request_names_one_ipv4_tcp_socket_by_its_four_addresses() -> None:
    msg = sockdiag.encode_request(LOCAL, REMOTE, seq=7)
    length, kind, flags, seq, pid = sockdiag.NLMSGHDR.unpack_from(msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 20, 1, 7, 0)  # no NLM_F_DUMP
    family, proto, ext, _pad, states = sockdiag.REQ_V2.unpack_from(msg, 16)
    assert (family, proto, ext, states) == (socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
    sport, dport = struct.unpack_from(">HH", msg, 24)
    assert (sport, dport) == (50000, 5000)
    assert msg[28:44] == bytes([127, 0, 0, 1]) + bytes(12)
    assert msg[44:60] == bytes([127, 0, 0, 2]) + bytes(12)
    assert msg[60:72] == struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    assert len(msg) == 72


def reply(
    seq: int, uid: int, inode: int, state: int = 1,
    local: tuple[str, int] = LOCAL, remote: tuple[str, int] = REMOTE,
) -> bytes:  # fmt: skip
    """An inet_diag_msg as the kernel writes it (with a trailing attribute)."""
    sockid = sockdiag.encode_request(local, remote, 0)[24:72]
    body = sockdiag.MSG_HEAD.pack(socket.AF_INET, state, 0, 0) + sockid
    body += sockdiag.MSG_TAIL.pack(0, 0, 0, uid, inode) + b"\x08\x00\x0f\x00\x00\x00\x00\x00"
    return sockdiag.NLMSGHDR.pack(16 + len(body), 20, 0, seq, 0) + body


def error(seq: int, code: int) -> bytes:
    body = struct.pack("=i", -code) + bytes(16)
    return sockdiag.NLMSGHDR.pack(16 + len(body), 2, 0, seq, 0) + body


def test_the_reply_gives_the_owner_and_whether_a_process_holds_it() -> None:
    owner = sockdiag.decode_reply(reply(3, 1002, 4242), LOCAL, REMOTE, 3)
    assert owner == sockdiag.Owner(uid=1002, inode=4242, state=1) and owner.live
    # TIME_WAIT, an orphan (inode 0), a listener: nobody's live connection.
    assert not sockdiag.decode_reply(reply(3, 0, 0, state=6), LOCAL, REMOTE, 3).live  # type: ignore[union-attr]
    assert sockdiag.decode_reply(reply(3, 0, 99, state=5), LOCAL, REMOTE, 3) == sockdiag.Owner(
        uid=0, inode=99, state=5
    )  # a closing connection its process still holds
    assert not sockdiag.Owner(uid=0, inode=0, state=5).live
    assert not sockdiag.Owner(uid=0, inode=9, state=10).live
    assert sockdiag.decode_reply(error(3, errno.ENOENT), LOCAL, REMOTE, 3) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 10,
        reply(4, 1, 1),  # another request's answer
        reply(3, 1, 1, local=("127.0.0.1", 50001)),  # another socket
        reply(3, 1, 1)[:60],  # truncated
        error(3, errno.EPERM),
        sockdiag.NLMSGHDR.pack(200, 20, 0, 3, 0),  # longer than what came
        sockdiag.NLMSGHDR.pack(16, 3, 0, 3, 0),  # NLMSG_DONE: no answer
    ],
)
def test_a_reply_that_is_not_the_answer_is_an_error(data: bytes) -> None:
    with pytest.raises(sockdiag.DiagError):
        sockdiag.decode_reply(data, LOCAL, REMOTE, 3)


def test_the_real_kernel_names_the_owner_of_a_real_connection() -> None:
    with socket.socket() as server, sockdiag.open_socket() as nl:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with conn:
            local = conn.getsockname()
            assert peer_owner(nl, peer, local, 1) == os.geteuid()
            assert peer_owner(nl, ("127.0.0.1", 1), local, 2) is None  # no such socket
            client.close()  # the client's side ends first: FIN_WAIT2, then TIME_WAIT
            time.sleep(0.05)
            assert peer_owner(nl, peer, local, 3) is None
    assert allowed_uids() == {os.geteuid(), 0}


def test_ipv6_loopback_too() -> None:
    with socket.socket(socket.AF_INET6) as server, sockdiag.open_socket() as nl:
        server.bind(("::1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]):
            conn, peer = server.accept()
            with conn:
                assert peer_owner(nl, peer, conn.getsockname(), 1) == os.geteuid()
    with pytest.raises(sockdiag.DiagError):
        sockdiag.encode_request(("::1", 1), ("127.0.0.1", 2), 1)


class FakeCheck(PeerCheck):
    """Answers from a table by the client's port (uid None: unknown), on the check thread."""

    def __init__(self, uids: dict[int, int | None], max_pending: int = 256) -> None:
        super().__init__(max_pending)
        self.uids = uids
        self.gate = threading.Event()
        self.gate.set()

    def lookup(self, conn: socket.socket) -> int | None:
        self.gate.wait(10)
        return self.uids.get(conn.getpeername()[1], os.geteuid())


def served(
    check: PeerCheck, log: logging.Logger, rate: float = 50, burst: int = 64
) -> tuple[GatedAcceptor, list[int], Callable[[], None]]:
    """An acceptor on a loop of its own thread; the list gets each allowed client port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    allowed: list[int] = []

    def on_allowed(conn: socket.socket, address: tuple[str, int]) -> None:
        allowed.append(address[1])
        conn.sendall(b"hi")
        conn.close()

    acceptor = GatedAcceptor(sock, on_allowed, what="test port", log=log, rate=rate,
                             burst=burst, check=check)  # fmt: skip

    async def start() -> None:
        acceptor.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(5)

    def stop() -> None:
        loop.call_soon_threadsafe(acceptor.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

    return acceptor, allowed, stop


def connect(port: int) -> tuple[socket.socket, int]:
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    return c, c.getsockname()[1]


def outcome(c: socket.socket) -> bytes | str:
    try:
        return c.recv(10) or "closed"
    except ConnectionResetError:
        return "reset"
    finally:
        c.close()


def test_our_users_connection_is_served_another_users_is_reset() -> None:
    check = FakeCheck({})
    check.gate.clear()
    acceptor, allowed, stop = served(check, logging.getLogger("test-accept"))
    port = acceptor.sock.getsockname()[1]
    try:
        (ours, our_port), (theirs, their_port) = connect(port), connect(port)
        check.uids[their_port] = 1234
        check.gate.set()
        assert (outcome(ours), outcome(theirs)) == (b"hi", "reset")
        assert allowed == [our_port]
    finally:
        stop()


def test_refusals_reset_and_log_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test-accept-2")
    check = FakeCheck({})
    check.gate.clear()  # verdicts wait until every client port is known
    acceptor, allowed, stop = served(check, log)
    port = acceptor.sock.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, "test-accept-2"):
            clients = [connect(port) for _ in range(30)]
            for i, (_, p) in enumerate(clients):
                check.uids[p] = None if i % 3 else 4321  # unknown or another user's
            check.gate.set()
            assert [outcome(c) for c, _ in clients] == ["reset"] * 30
        assert allowed == []
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "refused a connection" in lines[0], lines
    finally:
        stop()


def test_at_the_pending_bound_accepting_waits_and_nothing_is_refused() -> None:
    """With 4 checks waiting, the rest of 10 connections stay in the listen backlog (not
    accepted, so they hold no descriptor of ours) and are served once checks end."""
    check = FakeCheck({}, max_pending=4)
    check.gate.clear()
    acceptor, allowed, stop = served(check, logging.getLogger("test-accept-3"))
    port = acceptor.sock.getsockname()[1]
    try:
        clients = [connect(port) for _ in range(10)]
        time.sleep(0.3)
        assert check.full() and allowed == []
        check.gate.set()
        assert [outcome(c) for c, _ in clients] == [b"hi"] * 10
    finally:
        stop()


def test_accepting_is_bounded_per_second() -> None:
    """A burst of 5 then 10 a second: 25 connections take about 2 s to be accepted, and
    every one is served in the end (they wait in the listen backlog, not refused)."""
    acceptor, _, stop = served(FakeCheck({}), logging.getLogger("t4"), 10, 5)
    port = acceptor.sock.getsockname()[1]
    try:
        start = time.monotonic()
        clients = [connect(port) for _ in range(25)]
        assert [outcome(c) for c, _ in clients] == [b"hi"] * 25
        took = time.monotonic() - start
        assert took >= 1.5, took
    finally:
        stop()


def test_the_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.1)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # burst caps


def test_the_real_check_thread_allows_our_own_connection() -> None:
    check = PeerCheck(max_pending=8)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, _ = server.accept()
            got: list[tuple[bool, int | None]] = []
            done = threading.Event()

            def reply(ok: bool, uid: int | None) -> None:
                got.append((ok, uid))
                done.set()

            assert check.submit(conn, reply)
            assert done.wait(5)
            conn.close()
    assert got == [(True, os.geteuid())]
