"""The kernel's own stdout/stderr (stream 0): bounded, escaped, never on the relay's path.

Everything a sandbox writes there is untrusted: it may be endless, contain terminal
escape sequences or fake log lines, and the server's stderr may be a pipe nobody reads.
So, for each kernel (the provisioner owns one :class:`ConsoleSink` across restarts):

* a tail of the last TAIL_BYTES is kept for start-up error messages;
* with ``mode="stderr"``, output is escaped (:func:`printable`: only printable text, tab
  and newline pass), each line prefixed with the kernel's id, and handed to one writer
  thread per process through a bounded queue: a stalled stderr fills the queue and
  output is dropped, the relay loop never blocks;
* at most ``limit`` bytes per kernel are written (escaped, prefixes included), at most RATE
  bytes per second after a BURST; what is dropped is counted, and logged once when output
  is first dropped.

Who calls what: the session calls the sink with each chunk (relay loop); the provisioner
reads :attr:`ConsoleSink.tail` for errors and :meth:`stats` for ``ps``-like reports.
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
import time
import unicodedata
from typing import BinaryIO

from ..settings import check

TAIL_BYTES = 8192
RATE = 16 * 1024  # bytes per second passed on once the burst is spent
BURST = 64 * 1024
QUEUE_BYTES = 256 * 1024  # across all kernels of the process, waiting for stderr


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every character that is not printable (control characters, escape
    sequences, line and paragraph separators...) shown as ``\\xNN``/``\\uNNNN``; tab and
    newline kept. Cut at ``limit`` characters (an ellipsis marks the cut)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "\u2026"
    out = []
    for ch in text:
        if ch in "\n\t" or (ch.isprintable() and unicodedata.category(ch) not in ("Zl", "Zp")):
            out.append(ch)
        else:
            code = ord(ch)
            out.append("\\x%02x" % code if code < 0x100 else "\\u%04x" % code)
    return "".join(out)


def one_line(text: str, limit: int = 500) -> str:
    """:func:`printable`, with newlines and tabs escaped too: a single log line."""
    return printable(text, limit).replace("\n", "\\n").replace("\t", "\\t")


class _Writer:
    """One thread per process that writes to the server's stderr; the relay loop only
    ever enqueues (and drops when QUEUE_BYTES are already waiting)."""

    _instance: _Writer | None = None
    _lock = threading.Lock()

    def __init__(self, stream: BinaryIO | None) -> None:
        self.stream = stream
        self.queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.queued = 0
        self._count = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="sandbox-kernel-console", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _Writer:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls(getattr(sys.stderr, "buffer", None))
            return cls._instance

    def offer(self, data: bytes) -> bool:
        with self._count:
            if self.queued + len(data) > QUEUE_BYTES:
                return False
            self.queued += len(data)
        self.queue.put(data)
        return True

    def _run(self) -> None:
        while True:
            data = self.queue.get()
            try:
                if self.stream is not None:
                    self.stream.write(data)
                    self.stream.flush()
            except (OSError, ValueError):
                pass
            finally:
                with self._count:
                    self.queued -= len(data)


class ConsoleSink:
    """One kernel's console output; called with each chunk on the relay loop."""

    def __init__(
        self, label: str, mode: str, limit: int, log: logging.Logger | None = None
    ) -> None:
        """``label``: the kernel id (its first 8 characters prefix each line); ``mode``: a
        ``console_output`` choice (settings.py declares them; PolicyError otherwise)."""
        self.label = label
        self.mode = check("console_output", mode)
        self.limit = limit
        self.log = log or logging.getLogger(__name__)
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self.received = 0  # bytes the sandbox wrote
        self.passed = 0  # bytes handed to stderr (escaped and prefixed)
        self.dropped = 0  # bytes of that not written (cap, rate or a stalled stderr)
        self._tokens = float(BURST)
        self._stamp = time.monotonic()
        self._at_line_start = True
        self._warned = False

    def __call__(self, data: bytes) -> None:
        self.received += len(data)
        self._keep_tail(data)
        if self.mode == "discard":
            return
        out = self._format(data)
        allowed = min(len(out), self._budget())
        if allowed < len(out):
            self._drop(len(out) - allowed)
            out = out[:allowed]
        if not out:
            return
        if _Writer.get().offer(out):
            self.passed += len(out)
            self._tokens -= len(out)
        else:
            self._drop(len(out))

    def _budget(self) -> int:
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._stamp) * RATE)
        self._stamp = now
        return max(0, min(int(self._tokens), self.limit - self.passed))

    def _drop(self, n: int) -> None:
        self.dropped += n
        if not self._warned:
            self._warned = True
            self.log.warning(
                "sandbox-kernel %s: the kernel's console output is over its bounds "
                "(console_limit=%d bytes per kernel, %d bytes/s): the rest is dropped",
                self.label,
                self.limit,
                RATE,
            )

    def _format(self, data: bytes) -> bytes:
        text = printable(data.decode("utf-8", "replace"))
        prefix = f"[sandbox-kernel {self.label[:8]}] "
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break  # the chunk ended with a newline
            if self._at_line_start:
                out.append(prefix)
            out.append(line)
            if not last:
                out.append("\n")
            self._at_line_start = not last
        return "".join(out).encode("utf-8", "replace")

    def _keep_tail(self, data: bytes) -> None:
        self._tail.append(data[-TAIL_BYTES:])
        self._tail_size += len(self._tail[-1])
        while self._tail_size > TAIL_BYTES and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft())

    @property
    def tail(self) -> str:
        """The last output, escaped, for an error message."""
        raw = b"".join(self._tail)[-TAIL_BYTES:]
        return printable(raw.decode("utf-8", "replace")).strip()[-2000:]

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "passed": self.passed, "dropped": self.dropped}
