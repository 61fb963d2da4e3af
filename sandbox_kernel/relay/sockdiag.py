"""Who owns one TCP socket, asked of the Linux kernel by its exact address (sock_diag).

A ``NETLINK_SOCK_DIAG`` request names one TCP socket by its four addresses; the
kernel answers with that socket alone (``inet_diag_msg``: its state, owner uid, inode) or
an error. The cost does not depend on how many sockets the host has, unlike reading
``/proc/net/tcp``, which another local user can inflate at will.

The encoding and decoding are pure (:func:`encode_request`, :func:`decode_reply`);
:func:`socket_owner` does the one blocking round trip on a netlink socket its caller
owns (:mod:`.peers` runs it on its own thread, never on an event loop).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from ..errors import SandboxError

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF

# Linux's TCP states (include/net/tcp_states.h) that mean "no process's live connection".
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10
NOT_A_LIVE_CONNECTION = frozenset({TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN})

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_sockid: sport, dport (big-endian), src[4], dst[4] (big-endian words, the
# address in the first), interface, cookie[2].
SOCKID = struct.Struct(">HH16s16s")
SOCKID_TAIL = struct.Struct("=III")
REQ_V2 = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
# inet_diag_msg after its sockid: expires, rqueue, wqueue, uid, inode.
MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
MSG_TAIL = struct.Struct("=IIIII")
SOCKID_SIZE = SOCKID.size + SOCKID_TAIL.size  # 48


class DiagError(SandboxError):
    """The kernel's answer could not be read, or the kernel refused the question (the
    peer check then refuses the connection and logs why, naming the fix)."""


@dataclass(frozen=True)
class Owner:
    """What the kernel says of one socket."""

    uid: int
    inode: int
    state: int

    @property
    def live(self) -> bool:
        """A connection a process holds (not TIME_WAIT, closed, listening or orphaned)."""
        return self.inode != 0 and self.state not in NOT_A_LIVE_CONNECTION


def family_of(address: tuple[str, int]) -> int:
    """AF_INET or AF_INET6, from how the address is written."""
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def _sockid(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    family = family_of(local)
    return SOCKID.pack(
        local[1], remote[1], socket.inet_pton(family, local[0]).ljust(16, b"\0"),
        socket.inet_pton(family, remote[0]).ljust(16, b"\0"),
    ) + SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)  # fmt: skip


def encode_request(local: tuple[str, int], remote: tuple[str, int], seq: int) -> bytes:
    """The ``SOCK_DIAG_BY_FAMILY`` request for the one TCP socket whose own address is
    ``local`` and whose peer is ``remote`` (IPv4, or IPv6 written with colons; pure)."""
    if family_of(local) != family_of(remote):
        raise DiagError(f"{local} and {remote} are of different families")
    body = REQ_V2.pack(family_of(local), socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body += _sockid(local, remote)
    return (
        NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body
    )


def decode_reply(
    data: bytes, local: tuple[str, int], remote: tuple[str, int], seq: int
) -> Owner | None:
    """The owner of the socket asked for in :func:`encode_request`'s ``seq`` from the
    kernel's answer ``data``; None if no such socket exists (ENOENT). A reply about any
    other socket, or one that does not parse, raises DiagError (pure)."""
    if len(data) < NLMSGHDR.size:
        raise DiagError(f"a netlink reply of {len(data)} bytes")
    length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data)
    if length < NLMSGHDR.size or length > len(data):
        raise DiagError(f"a netlink message of length {length} in {len(data)} bytes")
    if got_seq != seq:
        raise DiagError(f"a netlink reply to request {got_seq}, not {seq}")
    payload = data[NLMSGHDR.size : length]
    if kind == NLMSG_ERROR:
        if len(payload) < 4:
            raise DiagError("a truncated netlink error")
        (code,) = struct.unpack_from("=i", payload)
        if code == -errno.ENOENT:
            return None
        raise DiagError(f"sock_diag refused the request: {errno.errorcode.get(-code, code)}")
    if kind != SOCK_DIAG_BY_FAMILY:
        raise DiagError(f"an unexpected netlink message type {kind}")
    if len(payload) < MSG_HEAD.size + SOCKID_SIZE + MSG_TAIL.size:
        raise DiagError(f"a truncated inet_diag_msg ({len(payload)} bytes)")
    family, state, _timer, _retrans = MSG_HEAD.unpack_from(payload)
    sockid = payload[MSG_HEAD.size : MSG_HEAD.size + SOCKID.size]
    if family != family_of(local) or sockid != _sockid(local, remote)[: SOCKID.size]:
        raise DiagError("sock_diag answered about another socket")
    *_, uid, inode = MSG_TAIL.unpack_from(payload, MSG_HEAD.size + SOCKID_SIZE)
    return Owner(uid=uid, inode=inode, state=state)


def open_socket() -> socket.socket:
    """A netlink socket for :func:`socket_owner` (closed by its caller)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.settimeout(5)  # the kernel answers at once; a stuck socket is an error, not a hang
    return sock


def socket_owner(
    sock: socket.socket, local: tuple[str, int], remote: tuple[str, int], seq: int
) -> Owner | None:
    """Ask the kernel on ``sock`` (from :func:`open_socket`) who owns the TCP socket with
    address ``local`` and peer ``remote``. Blocking (one round trip); raises OSError or
    DiagError when the kernel cannot say."""
    sock.sendto(encode_request(local, remote, seq), (0, 0))
    while True:
        data = sock.recv(65536)
        if len(data) >= NLMSGHDR.size and NLMSGHDR.unpack_from(data)[3] != seq:
            continue  # the late answer to an earlier request that timed out
        return decode_reply(data, local, remote, seq)
