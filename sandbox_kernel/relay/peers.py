"""Who is on the other end of a loopback TCP connection: the relay's host ports (and a
user's Jupyter server, :mod:`sandbox_kernel.server_peers`) accept only the process's own
user and root.

The kernel's ports are on the host's 127.0.0.1, where every local user can connect.
HMAC keeps others from *sending* to a kernel, but ZeroMQ's PUB socket sends its output
(IOPub: every stream, result and status) to any subscriber: on a shared host another user
could read a kernel's output. So each accepted connection is checked: the kernel is asked
(:mod:`.sockdiag`, one socket by its exact address, O(1)) which uid owns the connecting
socket. A connection whose peer is no longer a live socket (TIME_WAIT, orphaned,
closed), or whose owner cannot be learnt, is refused.

The lookups run on one thread of their own (:class:`PeerCheck`, one per process), never on
an event loop, and at most ``MAX_PENDING_CHECKS`` wait for it: meanwhile its callers stop
accepting (connections wait in the kernel's listen backlog). The caller:
:class:`~sandbox_kernel.relay.accept.GatedAcceptor`.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable

from . import sockdiag

# Connections accepted and waiting for their check, per process (each holds a descriptor).
MAX_PENDING_CHECKS = 256

log = logging.getLogger(__name__)


def allowed_uids() -> frozenset[int]:
    """This process's user and root (who can read the kernel's connection file anyway)."""
    return frozenset({os.geteuid(), 0})


def peer_owner(
    nl: socket.socket, peer: tuple[str, int], local: tuple[str, int], seq: int
) -> int | None:
    """The uid of the live socket ``peer`` connected to our ``local`` (addresses as
    ``getpeername``/``getsockname`` give them), asked on the netlink socket ``nl``; None if
    it is not a live socket of any process. Blocking; raises OSError/DiagError."""
    owner = sockdiag.socket_owner(nl, peer[:2], local[:2], seq)
    return owner.uid if owner is not None and owner.live else None


class PeerCheck:
    """The process's one peer-check thread (:meth:`get`). Callers on any event loop
    :meth:`submit` an accepted socket and get the verdict back on their loop."""

    _instance: PeerCheck | None = None
    _lock = threading.Lock()

    def __init__(self, max_pending: int = MAX_PENDING_CHECKS) -> None:
        self.max_pending = max_pending
        self.allowed = allowed_uids()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sandbox-kernel-peers"
        )
        self._pending = 0
        self._count_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._nl: socket.socket | None = None  # the worker thread's own
        self._failing = False

    @classmethod
    def get(cls) -> PeerCheck:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def full(self) -> bool:
        """Whether MAX_PENDING_CHECKS connections are held (callers stop accepting)."""
        return self._pending >= self.max_pending

    def submit(self, conn: socket.socket, reply: Callable[[bool, int | None], None]) -> bool:
        """Queue the check of accepted socket ``conn``; ``reply(allowed, uid)`` is called
        from the check thread (the caller hops back to its loop), and the caller calls
        :meth:`release` once it has served or reset ``conn``: until then ``conn`` counts
        against MAX_PENDING_CHECKS. False, and nothing queued, at that bound: the caller
        resets ``conn``."""
        with self._count_lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
        try:
            self._executor.submit(self._run, conn, reply)
        except RuntimeError:  # interpreter shutdown
            self.release()
            return False
        return True

    def release(self) -> None:
        """One submitted connection is dealt with (served or reset)."""
        with self._count_lock:
            self._pending -= 1

    def _run(self, conn: socket.socket, reply: Callable[[bool, int | None], None]) -> None:
        try:
            uid = self.lookup(conn)
        except Exception:  # a bug here must not leave the connection unanswered
            log.exception("sandbox-kernel: the peer check failed")
            uid = None
        reply(uid is not None and uid in self.allowed, uid)

    def lookup(self, conn: socket.socket) -> int | None:
        """The owner of ``conn``'s peer (on the check thread); None if unknown."""
        try:
            peer, local = conn.getpeername(), conn.getsockname()
        except OSError:
            return None  # already reset by the peer
        try:
            if self._nl is None:
                self._nl = sockdiag.open_socket()
            uid = peer_owner(self._nl, peer, local, next(self._seq))
        except (OSError, sockdiag.DiagError) as exc:
            if self._nl is not None:
                self._nl.close()
                self._nl = None
            if not self._failing:  # once until a lookup works again: the log stays bounded
                self._failing = True
                log.error(
                    "sandbox-kernel: cannot ask the Linux kernel who owns a loopback "
                    "connection (sock_diag: %s); refusing such connections until it answers. "
                    "The peer check needs NETLINK_SOCK_DIAG for TCP (`modprobe tcp_diag`).",
                    exc,
                )
            return None
        self._failing = False
        return uid
