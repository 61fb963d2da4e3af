"""Message sizes on a ZeroMQ (ZMTP 3.x) byte stream, checked as the bytes pass (pure).

The relay hands the kernel's ZeroMQ traffic to Jupyter's client sockets, and libzmq
allocates a whole message as soon as it reads a frame's size: one frame announcing
768 MiB costs the client process 768 MiB, and jupyter_client sets no maximum. So the
host reads the framing of every stream coming *from* the sandbox on the kernel's ports
and refuses a frame, or a multi-frame message, larger than the maximum *before* its
header is passed on. Only headers are parsed; bodies are counted and skipped, so the cost
is a few operations per frame.

ZMTP 3.0/3.1 (https://rfc.zeromq.org/spec/23/, /spec/37/): a 64-byte greeting
(signature ``FF 00*8 7F``, major version 3, minor, mechanism, as-server, filler), then
frames: one flags byte (bit 0 MORE, bit 1 LONG, bit 2 COMMAND; the others zero), a
1-byte or 8-byte big-endian size, the body. A message is the frames up to the first
without MORE; a command is one frame. Anything else (an older major version, unknown
flag bits, a command with MORE) is refused: the kernel's own libzmq never sends it.
"""

from __future__ import annotations

GREETING_SIZE = 64
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class ZmtpError(ValueError):
    """The peer broke ZMTP framing or the size limit; the stream must end."""


class ZmtpLimiter:
    """Feed it the bytes of one direction of a ZMTP connection, in any split; it raises
    :class:`ZmtpError` before a chunk that would carry a message over ``max_message``."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._greeting = bytearray()
        self._header = bytearray()  # a frame header being read
        self._body_left = 0  # body bytes of the current frame still to come
        self._message = 0  # bytes of the current (multi-frame) message so far
        self._more = False  # the current frame is followed by another of its message
        self.largest = 0  # the largest message seen so far (for logs and tests)

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if len(self._greeting) < GREETING_SIZE:
                take = min(GREETING_SIZE - len(self._greeting), n - pos)
                self._greeting += data[pos : pos + take]
                pos += take
                self._check_greeting()
                continue
            if self._body_left:
                take = min(self._body_left, n - pos)
                self._body_left -= take
                pos += take
                if not self._body_left:
                    self._end_frame()
                continue
            self._header.append(data[pos])
            pos += 1
            self._read_header()

    def _check_greeting(self) -> None:
        g = self._greeting
        if g[:1] and g[0] != 0xFF:
            raise ZmtpError("not a ZMTP greeting")
        if len(g) >= 10 and g[9] != 0x7F:
            raise ZmtpError("not a ZMTP 3 greeting")
        if len(g) >= 11 and g[10] < 3:
            raise ZmtpError("ZMTP version %d is not accepted (3.x only)" % g[10])

    def _read_header(self) -> None:
        h = self._header
        flags = h[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ZmtpError("unknown ZMTP frame flags 0x%02x" % flags)
        if flags & _COMMAND and flags & _MORE:
            raise ZmtpError("a ZMTP command cannot have more frames")
        need = 9 if flags & _LONG else 2
        if len(h) < need:
            return
        size = int.from_bytes(h[1:need], "big")
        self._header = bytearray()
        total = size if flags & _COMMAND else self._message + size
        if total > self.max_message:
            what = "command" if flags & _COMMAND else "message"
            raise ZmtpError(
                "a ZeroMQ %s of at least %d bytes exceeds max_message_size (%d bytes)"
                % (what, total, self.max_message)
            )
        if not flags & _COMMAND:
            self._message = total
            self._more = bool(flags & _MORE)
        self._body_left = size
        if not size:
            self._end_frame()

    def _end_frame(self) -> None:
        if not self._more:
            self.largest = max(self.largest, self._message)
            self._message = 0
