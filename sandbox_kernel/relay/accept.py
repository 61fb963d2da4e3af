"""Accepting on a loopback listening socket without letting other local users in or
letting a flood of connections take the event loop.

:class:`GatedAcceptor` replaces asyncio's (or tornado's) accept loop on one listening
socket. Callers: :class:`~sandbox_kernel.relay.listeners.HostListeners` on the relay loop
(the kernel's ports) and :mod:`sandbox_kernel.server_peers` on a Jupyter server's loop.

- Accepting is bounded per socket by a token bucket (:class:`TokenBucket`): past it the
  socket is not read until a token is due, so excess connections wait in the kernel's
  listen backlog (then their SYNs are dropped) and cost this loop nothing.
- Each accepted socket's owner is checked off the loop (:class:`~.peers.PeerCheck`);
  until the verdict nothing is read from it. Another user's is reset (RST). While the
  checks waiting are at their bound, nothing is accepted: connections wait in the listen
  backlog (a user's own is delayed, never reset unchecked).
- Out of descriptors (EMFILE...), accepting pauses for a second instead of spinning.
- What a refusal or a failure logs is at most a line per ``LOG_EVERY`` seconds per socket,
  with the count of what was left out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .peers import PeerCheck

# Connections accepted per second per listening socket, and the burst allowed at once. A
# kernel's client connects a handful of times (one per channel); JupyterLab a few per tab.
ACCEPT_RATE = 50.0
ACCEPT_BURST = 64
CHECKS_FULL_PAUSE = 0.01  # seconds without accepting while the peer checks are full
ACCEPT_PAUSE = 1.0  # seconds without accepting after a failed accept (EMFILE, ENFILE...)
LOG_EVERY = 10.0  # seconds between two log lines of one socket
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved (pure: the caller gives the time)."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds from the last :meth:`take` until a token is due."""
        return max(0.0, (1 - self.tokens) / self.rate)


def reset(conn: socket.socket) -> None:
    """Close ``conn`` with a RST (nothing more is sent to the peer)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    conn.close()


class GatedAcceptor:
    """Accepts on ``sock`` (bound and listening) on the running loop; hands each
    connection of an allowed user to ``on_allowed(conn, address)`` on that loop."""

    def __init__(
        self,
        sock: socket.socket,
        on_allowed: Callable[[socket.socket, tuple[str, int]], None],
        *,
        what: str,
        log: logging.Logger,
        rate: float = ACCEPT_RATE,
        burst: int = ACCEPT_BURST,
        check: PeerCheck | None = None,
    ) -> None:
        self.sock = sock
        self.on_allowed = on_allowed
        self.what = what  # how log lines name the socket
        self.log = log
        self.bucket = TokenBucket(rate, burst)
        self.check = check or PeerCheck.get()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._refused = 0  # since the last log line
        self._log_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start accepting (on the loop that is to serve the connections)."""
        self.loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._read(True)

    def stop_accepting(self) -> None:
        """Stop accepting (on the loop); connections still waiting for their check are
        reset when it ends. The listening socket stays open."""
        self.closed = True
        self._read(False)
        for timer in (self._resume, self._log_timer):
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """:meth:`stop_accepting`, and close the listening socket."""
        self.stop_accepting()
        self.sock.close()

    def _read(self, on: bool) -> None:
        if self.loop is None or on == self._reading or (on and self.closed):
            return
        self._reading = on
        if on:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
        else:
            self.loop.remove_reader(self.sock.fileno())

    def _pause(self, seconds: float) -> None:
        assert self.loop is not None
        self._read(False)
        self._resume = self.loop.call_later(seconds, self._read, True)

    def _on_readable(self) -> None:
        assert self.loop is not None
        while not self.closed:
            if self.check.full():  # connections wait in the listen backlog, not as our fds
                self._pause(CHECKS_FULL_PAUSE)
                return
            if not self.bucket.take(time.monotonic()):
                self._pause(self.bucket.wait())
                return
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                self.bucket.tokens += 1  # nothing accepted: the token is not spent
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Out of descriptors (or anything else): pause, never spin on a socket that
                # stays readable, and never raise into the loop (it would log each time).
                self._note(f"accepting paused for {ACCEPT_PAUSE:g} s: {exc.strerror or exc}")
                self._pause(ACCEPT_PAUSE)
                return
            conn.setblocking(False)
            if not self.check.submit(conn, self._verdict_from_thread(conn, address)):
                reset(conn)
                self._note("too many connections waiting for their peer check")

    def _verdict_from_thread(
        self, conn: socket.socket, address: tuple[str, int]
    ) -> Callable[[bool, int | None], None]:
        loop = self.loop
        assert loop is not None

        def reply(allowed: bool, uid: int | None) -> None:
            try:
                loop.call_soon_threadsafe(self._verdict, conn, address, allowed, uid)
            except RuntimeError:  # the loop is closed: nobody serves this connection
                reset(conn)
                self.check.release()

        return reply

    def _verdict(
        self, conn: socket.socket, address: tuple[str, int], allowed: bool, uid: int | None
    ) -> None:
        self.check.release()
        if allowed and not self.closed:
            try:
                self.on_allowed(conn, address)
            except Exception as exc:
                reset(conn)
                self._note(f"a connection could not be served: {exc!r}")
            return
        reset(conn)
        if not self.closed:
            owner = "no live socket or unknown" if uid is None else f"uid {uid}"
            self._note(f"refused a connection from {address[0]}:{address[1]} ({owner})")

    def _note(self, what: str) -> None:
        """Log ``what`` happened now if nothing was logged for this socket lately; else
        count it, and say how many at the end of the interval, in one line."""
        assert self.loop is not None
        if self._log_timer is not None:
            self._refused += 1
            return
        self.log.warning("%s: %s", self.what, what)
        self._log_timer = self.loop.call_later(LOG_EVERY, self._flush_log)

    def _flush_log(self) -> None:
        assert self.loop is not None
        self._log_timer = None
        if self._refused and not self.closed:
            count, self._refused = self._refused, 0
            self.log.warning(
                "%s: %d more refused or failed connections in the last %g s",
                self.what, count, LOG_EVERY,
            )  # fmt: skip
            self._log_timer = self.loop.call_later(LOG_EVERY, self._flush_log)
