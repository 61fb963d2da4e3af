"""Host-local listening ports that lead into the sandbox.

Bound on 127.0.0.1 only, once per kernel, and kept across restarts so
clients reconnect to the same ports. Each accepted connection becomes a
stream to the matching port inside the current sandbox; with no sandbox ready
(between restarts) the connection is closed and ZeroMQ simply reconnects.
A connection from another user's process is closed at once (:mod:`.peers`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping

from ..inside.mux import abort_transport
from .peers import allowed_peer
from .session import AgentSession

HOST = "127.0.0.1"


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        abort_transport(transport)


class _CheckPeer(asyncio.Protocol):
    """The first protocol of an accepted connection: another user's socket is closed;
    ours is handed to a new stream into the sandbox (``open``)."""

    def __init__(self, open_stream: Callable[[], asyncio.Protocol]) -> None:
        self.open_stream = open_stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        protocol = self.open_stream() if allowed_peer(peer, local) else _Refuse()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class HostListeners:
    """Named host ports (``shell_port`` ...) mapped to ports inside the sandbox."""

    def __init__(self, inside_ports: Mapping[str, int]) -> None:
        self.inside_ports = dict(inside_ports)
        self.ports: dict[str, int] = {}
        self.session: AgentSession | None = None
        self._servers: list[asyncio.AbstractServer] = []

    async def open(self) -> None:
        """Bind every port (on the relay loop); on any failure, bind none."""
        try:
            for name, inside in self.inside_ports.items():
                await self._bind(name, inside, 0)
        except BaseException:
            await self.close()
            raise

    async def add(self, name: str, inside_port: int, host_port: int = 0) -> int:
        """Bind one more port (an exposed sandbox port; on the relay loop); return it.
        ``host_port`` 0 picks a free one. Raises OSError if it cannot be bound."""
        if name in self.ports:
            raise ValueError(f"{name} is already bound")
        await self._bind(name, inside_port, host_port)
        self.inside_ports[name] = inside_port
        return self.ports[name]

    async def _bind(self, name: str, inside: int, host_port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, host_port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        server = await asyncio.get_running_loop().create_server(self._factory(inside), sock=sock)
        self._servers.append(server)
        self.ports[name] = sock.getsockname()[1]

    def _factory(self, inside_port: int) -> Callable[[], asyncio.Protocol]:
        return lambda: _CheckPeer(lambda: self._accept(inside_port))

    def _accept(self, inside_port: int) -> asyncio.Protocol:
        session = self.session
        if session is None or not session.ready or session.dead.is_set():
            return _Refuse()
        try:
            return session.open_stream(inside_port)
        except Exception:
            return _Refuse()

    async def close(self) -> None:
        # Server.close() closes the listening sockets at once; wait_closed() would
        # also wait for open connections (Python >= 3.12), which the session aborts.
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        self.ports = {}
