"""Docker's multiplexed attach stream (``Tty: false``): 8-byte headers, then payload.

Pure. Header: stream type (0 stdin, 1 stdout, 2 stderr), three zero bytes,
payload length as u32 big-endian. Docker writes these headers itself; the
sandbox's bytes are only ever inside payloads.
"""

from __future__ import annotations

import struct

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxI")


class DockerStreamError(Exception):
    pass


class DockerStreamDemux:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._want = 0  # payload bytes still to come for the current header
        self._kind = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Return (stream type, payload piece) pairs; pieces may split a payload."""
        out: list[tuple[int, bytes]] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._want:
                n = min(self._want, len(view) - pos)
                out.append((self._kind, bytes(view[pos : pos + n])))
                self._want -= n
                pos += n
                continue
            need = _HEADER.size - len(self._buf)
            self._buf += view[pos : pos + need]
            pos += min(need, len(view) - pos)
            if len(self._buf) < _HEADER.size:
                break
            if self._buf[0] not in (0, 1, 2) or any(self._buf[1:4]):
                raise DockerStreamError(f"bad attach stream header {bytes(self._buf)!r}")
            self._kind, self._want = self._buf[0], _HEADER.unpack(self._buf)[1]
            self._buf.clear()
        return out
