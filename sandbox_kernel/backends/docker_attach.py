"""Docker's attach stream: how a container's stdin/stdout become an agent's pipe.

:func:`attach_stream` (on the relay loop) opens an HTTP upgrade on the Docker API
socket for one container, before it starts, and hands the session raw bytes both ways:
what the container writes to stdout arrives in Docker's multiplexed framing
(:class:`DockerStreamDemux`, pure: 8-byte headers, then payload), and what the session
writes to stdin must escape Docker's detach keys (``session.escape_stdin``). Nothing
outside the Docker backend knows about either.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any
from urllib.parse import quote

from ..errors import SandboxError
from ..inside import protocol as p
from ..relay.session import AgentSession, SessionError

MAX_RESPONSE_HEAD = 64 * 1024

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxI")


class DockerStreamError(SandboxError):
    """Docker's attach stream is malformed (the session ends on it)."""


class DockerStreamDemux:
    """Stream type (0 stdin, 1 stdout, 2 stderr), three zero bytes, payload length as u32
    big-endian, payload. Docker writes these headers itself; the sandbox's bytes are only
    ever inside payloads."""

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


class _Attach(asyncio.Protocol):
    """The API connection: the HTTP exchange, then the session's pipe."""

    def __init__(self, session: AgentSession, upgraded: asyncio.Future[None]) -> None:
        self.session = session
        self.upgraded = upgraded
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.demux = DockerStreamDemux()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            if not self.upgraded.done():
                data = self._read_head(data)
            for kind, piece in self.demux.feed(data):
                if kind == STDOUT:
                    self.session.data_received(piece)
        except (DockerStreamError, SessionError) as exc:
            if not self.upgraded.done():
                self.upgraded.set_exception(exc)
                assert self.transport is not None
                self.transport.abort()
            else:
                self.session.fail(str(exc))

    def _read_head(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_RESPONSE_HEAD:
                raise SessionError("oversized HTTP response from the Docker daemon")
            return b""
        head, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[1] not in ("101", "200"):
            raise SessionError(f"Docker refused to attach: {status} {rest[:500]!r}")
        assert self.transport is not None
        self.session.connection_made(self.transport)  # from here on, the session's pipe
        self.upgraded.set_result(None)
        return rest

    def pause_writing(self) -> None:
        if self.upgraded.done():
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.upgraded.done():
            self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(SessionError("the Docker daemon closed the attach"))
        self.session.connection_lost(exc)


async def attach_stream(
    session: AgentSession, endpoint: tuple[str, Any], api_version: str, sandbox_id: str
) -> None:
    """On the relay loop: open the attach stream (stdin + stdout) of ``sandbox_id``
    and connect ``session`` to it."""
    loop = asyncio.get_running_loop()
    session.prepare()
    session.escape_stdin = True  # Docker watches stdin for its detach keys
    upgraded: asyncio.Future[None] = loop.create_future()
    kind, where = endpoint
    if kind == "unix":
        transport, _ = await loop.create_unix_connection(lambda: _Attach(session, upgraded), where)
    else:
        transport, _ = await loop.create_connection(
            lambda: _Attach(session, upgraded), where[0], where[1]
        )
    path = f"/v{api_version}/containers/{quote(sandbox_id)}/attach"
    transport.write(
        (
            f"POST {path}?stream=1&stdin=1&stdout=1&stderr=0"
            f"&detachKeys={quote(p.DETACH_KEYS)} HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    await upgraded
