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

from collections.abc import Callable

GREETING_SIZE = 64
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class ZmtpError(ValueError):
    """The peer broke ZMTP framing or the size limit; the stream must end."""


class ZmtpLimiter:
    """Feed it the bytes of one direction of a ZMTP connection, in any split; it raises
    :class:`ZmtpError` before a chunk that would carry a message over ``max_message``.

    With ``on_message``, each whole message is also handed over as its frames' bodies:
    the first ``capture_frames`` frames of at most ``capture`` bytes each, None for the
    others (the IOPub watch reads message headers this way, at the cost of a small copy)."""

    def __init__(
        self,
        max_message: int,
        on_message: Callable[[list[bytes | None]], None] | None = None,
        capture: int = 0,
        capture_frames: int = 0,
    ) -> None:
        self.max_message = max_message
        self.on_message = on_message
        self.capture = capture
        self.capture_frames = capture_frames
        self._frames: list[bytes | None] = []  # the current message's frames (on_message)
        self._body: bytearray | None = None  # the current frame's body, if captured
        self._command = False  # the current frame is a command (not part of a message)
        self._handshaken = False  # the first command (the mechanism's READY) has passed
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
                if self._body is not None:
                    self._body += data[pos : pos + take]
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
        self._command = bool(flags & _COMMAND)
        if not self._command:
            self._message = total
            self._more = bool(flags & _MORE)
        keep = (
            self.on_message is not None
            and not self._command
            and size <= self.capture
            and len(self._frames) < self.capture_frames
        )
        self._body = bytearray() if keep else None
        self._body_left = size
        if not size:
            self._end_frame()

    def _end_frame(self) -> None:
        if self.on_message is not None and not self._command:
            self._frames.append(bytes(self._body) if self._body is not None else None)
        self._body = None
        if self._command:
            self._command = False
            self._handshaken = True
            return
        if not self._more:
            self.largest = max(self.largest, self._message)
            self._message = 0
            frames, self._frames = self._frames, []
            if self.on_message is not None:
                self.on_message(frames)

    @property
    def between_messages(self) -> bool:
        """The stream is past its handshake and between two messages (a message may be
        written into it here without breaking the framing)."""
        return (
            self._handshaken
            and not self._header
            and not self._body_left
            and not self._frames
            and not self._message
            and not self._more
        )


def encode_message(frames: list[bytes]) -> bytes:
    """One ZMTP message of ``frames`` as it goes on the wire (short or long frames)."""
    out = bytearray()
    for i, body in enumerate(frames):
        flags = _MORE if i < len(frames) - 1 else 0
        if len(body) > 255:
            out.append(flags | _LONG)
            out += len(body).to_bytes(8, "big")
        else:
            out.append(flags)
            out.append(len(body))
        out += body
    return bytes(out)
