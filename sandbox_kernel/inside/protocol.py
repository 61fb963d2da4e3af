"""The relay's frame protocol: encoding, incremental decoding, flow-control windows.

Pure and standard-library only: this module is also shipped into the sandbox
(see ``bundle.py``), where it must run on the image's Python (>= 3.8).
The wire format is specified in ``docs/protocol.md``.

Every frame is a 9-byte header followed by ``length`` payload bytes::

    type: u8 | stream id: u32 big-endian | length: u32 big-endian | payload

The decoder never trusts the peer: unknown types, oversized lengths and
malformed control payloads raise :class:`ProtocolError`, and the caller tears
the sandbox down.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

VERSION = 1

HEADER = struct.Struct(">BII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024
# Bytes a sender may have in flight per stream and direction before it needs credit.
INITIAL_WINDOW = 512 * 1024
# The receiver returns credit once this much has been consumed, to keep CREDIT frames rare.
CREDIT_BATCH = INITIAL_WINDOW // 4
MAX_STREAM_ID = 2**32 - 1

OPEN = 1  # host -> agent: connect to 127.0.0.1:<u16 port> inside the sandbox
DATA = 2  # both ways: bytes of a stream
EOF = 3  # both ways: the sender will send no more DATA on this stream (half-close)
RESET = 4  # both ways: abort the stream in both directions; payload: utf-8 reason
CREDIT = 5  # both ways: <u32> more bytes may be sent on this stream
CONTROL = 6  # both ways, stream 0 only: one JSON object, see docs/protocol.md

FRAME_NAMES = {
    OPEN: "OPEN",
    DATA: "DATA",
    EOF: "EOF",
    RESET: "RESET",
    CREDIT: "CREDIT",
    CONTROL: "CONTROL",
}

# Stream 0 carries CONTROL frames, and DATA/CREDIT for the kernel's console output.
CONSOLE_STREAM = 0

# Ports the kernel binds on the sandbox's own loopback, which OPEN frames name; each
# sandbox has its own network namespace, so fixed numbers never collide. They lie below
# every ephemeral port range (Linux 32768+, gVisor 16000+): the agent's connect retries
# while the kernel starts could otherwise pick the port itself as source and
# self-connect, taking the port from the kernel (seen under runc as EADDRINUSE).
INSIDE_PORTS = {
    "shell_port": 15001,
    "iopub_port": 15002,
    "stdin_port": 15003,
    "control_port": 15004,
    "hb_port": 15005,
}
KERNEL_INSIDE_PORTS = frozenset(INSIDE_PORTS.values())

_PORT = struct.Struct(">H")
_U32 = struct.Struct(">I")


# Docker's attach watches the stdin it forwards for the detach sequence ctrl-p ctrl-q
# and drops the connection when it appears. Frames are binary, so on that pipe every
# ctrl-p byte is sent as ctrl-p NUL, and the sequence can never occur.
DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_P = b"\x10"
_CTRL_P_ESCAPED = b"\x10\x00"


def escape_stdin(data: bytes) -> bytes:
    return data.replace(_CTRL_P, _CTRL_P_ESCAPED)


class StdinUnescaper:
    """Undo :func:`escape_stdin` on a byte stream split at arbitrary points."""

    def __init__(self) -> None:
        self._pending = False  # the last byte seen was ctrl-p: a NUL must follow

    def feed(self, data: bytes) -> bytes:
        i, n = 0, len(data)
        if self._pending and n:
            if data[0] != 0:
                raise ProtocolError("bad stdin escape")
            i, self._pending = 1, False
        if _CTRL_P not in data:
            return data[i:]
        out = bytearray()
        while i < n:
            j = data.find(_CTRL_P, i)
            if j < 0:
                out += data[i:]
                break
            out += data[i : j + 1]
            if j + 1 == n:
                self._pending = True
                break
            if data[j + 1] != 0:
                raise ProtocolError("bad stdin escape")
            i = j + 2
        return bytes(out)


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame sequence."""


class Frame(NamedTuple):
    type: int
    stream: int
    payload: bytes


def encode(ftype: int, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes exceeds MAX_PAYLOAD" % len(payload))
    return HEADER.pack(ftype, stream, len(payload)) + payload


def encode_data(stream: int, data: bytes) -> list[bytes]:
    """DATA frames for ``data``, split at MAX_PAYLOAD."""
    view = memoryview(data)
    return [
        HEADER.pack(DATA, stream, len(chunk)) + bytes(chunk)
        for chunk in (view[i : i + MAX_PAYLOAD] for i in range(0, len(view), MAX_PAYLOAD))
    ]


def encode_open(stream: int, port: int) -> bytes:
    return encode(OPEN, stream, _PORT.pack(port))


def encode_credit(stream: int, amount: int) -> bytes:
    return encode(CREDIT, stream, _U32.pack(amount))


def encode_reset(stream: int, reason: str = "") -> bytes:
    return encode(RESET, stream, reason.encode("utf-8", "replace")[:1024])


def encode_control(message: dict[str, Any]) -> bytes:
    return encode(CONTROL, CONSOLE_STREAM, json.dumps(message, separators=(",", ":")).encode())


def decode_port(payload: bytes) -> int:
    if len(payload) != _PORT.size:
        raise ProtocolError("OPEN payload must be a 2-byte port")
    port = _PORT.unpack(payload)[0]
    if port == 0:
        raise ProtocolError("OPEN to port 0")
    return int(port)


def decode_credit(payload: bytes) -> int:
    if len(payload) != _U32.size:
        raise ProtocolError("CREDIT payload must be a 4-byte count")
    amount = int(_U32.unpack(payload)[0])
    if amount == 0:
        raise ProtocolError("CREDIT of 0 bytes")
    return amount


def decode_control(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("CONTROL payload is not JSON: %s" % exc) from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("CONTROL payload must be an object with a string 'op'")
    return message


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, in any split."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            ftype, stream, length = HEADER.unpack_from(buf, pos)
            if ftype not in FRAME_NAMES:
                raise ProtocolError("unknown frame type %d" % ftype)
            if length > self._max_payload:
                raise ProtocolError(
                    "frame of %d bytes exceeds the %d-byte limit" % (length, self._max_payload)
                )
            if ftype == CONTROL and stream != CONSOLE_STREAM:
                raise ProtocolError("CONTROL frame on stream %d" % stream)
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            frames.append(Frame(ftype, stream, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames


class SendWindow:
    """How much a sender may still send on one stream."""

    def __init__(self, initial: int = INITIAL_WINDOW) -> None:
        self.available = initial

    def take(self, wanted: int) -> int:
        n = min(wanted, self.available)
        self.available -= n
        return n

    def grant(self, amount: int, limit: int = INITIAL_WINDOW) -> None:
        self.available += amount
        if self.available > limit:
            # More credit than was ever sent: the peer is broken or hostile.
            raise ProtocolError("peer granted credit beyond the window")


class RecvWindow:
    """What a receiver has taken in and what it owes back as credit.

    Credit is returned only for bytes that have left this side's buffers, in
    batches of at least CREDIT_BATCH. That never deadlocks: a sender is stalled
    only when a whole window (4 batches) is outstanding.
    """

    def __init__(self, initial: int = INITIAL_WINDOW) -> None:
        self.outstanding = 0  # received and not yet credited back
        self.initial = initial

    def received(self, n: int) -> None:
        self.outstanding += n
        if self.outstanding > self.initial:
            raise ProtocolError("peer sent beyond its window")

    def settle(self, still_buffered: int) -> int | None:
        """Given the bytes this side still holds, return credit to send now, if any."""
        owed = self.outstanding - still_buffered
        if owed >= CREDIT_BATCH:
            self.outstanding -= owed
            return owed
        return None
