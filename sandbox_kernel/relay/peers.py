"""Who is on the other end of a loopback TCP connection: the relay's host ports accept
only the Jupyter process's own user (and root).

The kernel's ports are on the host's 127.0.0.1, where every local user can connect.
HMAC keeps others from *sending* to a kernel, but ZeroMQ's PUB socket sends its output
(IOPub: every stream, result and status) to any subscriber: on a shared host another user
could read a kernel's output. :class:`~sandbox_kernel.relay.listeners.HostListeners`
therefore asks, for each accepted connection, which uid owns the connecting socket.

Linux keeps that in ``/proc/net/tcp`` (the owner of each socket of this network
namespace: both ends of a loopback connection are listed). A connection whose peer is no
longer a live socket (a TIME_WAIT or orphaned entry, inode 0) has no owner and is refused.
The parsing is pure; reading the table is a small blocking read, done on the relay loop
once per accepted connection (clients connect a handful of times per kernel).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

TCP_TABLES = ("/proc/net/tcp",)  # the host ports are IPv4 (127.0.0.1) only


def proc_address(ip: str, port: int) -> str:
    """``127.0.0.1``, 5000 -> ``0100007F:1388``, as /proc/net/tcp writes an IPv4 address."""
    (value,) = struct.unpack("<I", socket.inet_aton(ip))
    return f"{value:08X}:{port:04X}"


def socket_owner(lines: Iterable[str], local: str, remote: str) -> int | None:
    """The uid owning the socket whose local and remote addresses (in /proc/net/tcp form)
    are ``local`` and ``remote``; None if there is no such live socket (pure)."""
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[1] != local or fields[2] != remote:
            continue
        try:
            uid, inode = int(fields[7]), int(fields[9])
        except ValueError:
            continue
        if inode == 0:  # TIME_WAIT / orphaned: no process owns it any more
            return None
        return uid
    return None


def peer_uid(
    peer: tuple[str, int], local: tuple[str, int], tables: Iterable[str] = TCP_TABLES
) -> int | None:
    """The uid of the process that opened the connecting socket ``peer`` to our ``local``
    (addresses as asyncio's ``peername``/``sockname``); None if unknown. Blocking read."""
    want_local, want_remote = proc_address(*peer[:2]), proc_address(*local[:2])
    for table in tables:
        try:
            with open(table) as f:
                next(f, None)
                uid = socket_owner(f, want_local, want_remote)
        except OSError:
            continue
        if uid is not None:
            return uid
    return None


def allowed_peer(peer: tuple[str, int] | None, local: tuple[str, int] | None) -> bool:
    """Whether a connection from ``peer`` may use our host port: its socket belongs to this
    process's user or to root (who can read the kernel's connection file anyway)."""
    if not peer or not local:
        return False
    uid = peer_uid(peer, local)
    return uid is not None and uid in (os.geteuid(), 0)
