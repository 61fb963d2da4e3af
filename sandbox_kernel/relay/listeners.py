"""Host-local listening ports that lead into the sandbox.

Bound on 127.0.0.1 only, once per kernel, and kept across restarts so
clients reconnect to the same ports. Each accepted connection becomes a
stream to the matching port inside the current sandbox; with no sandbox ready
(between restarts) the connection is closed and ZeroMQ simply reconnects.
Accepting is bounded per port and a connection from another user's process is reset
before anything of it reaches the sandbox (:mod:`.accept`, :mod:`.peers`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping

from ..inside.mux import abort_transport
from .accept import GatedAcceptor, reset
from .session import AgentSession

HOST = "127.0.0.1"
log = logging.getLogger(__name__)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        abort_transport(transport)


class HostListeners:
    """Named host ports (``shell_port`` ...) mapped to ports inside the sandbox."""

    def __init__(self, inside_ports: Mapping[str, int], label: str = "a sandbox") -> None:
        self.inside_ports = dict(inside_ports)
        self.label = label  # how log lines name the kernel
        self.ports: dict[str, int] = {}
        self.session: AgentSession | None = None
        self._acceptors: list[GatedAcceptor] = []

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
        port = sock.getsockname()[1]
        acceptor = GatedAcceptor(
            sock, self._connected(inside), what=f"{self.label}: host port {port} ({name})", log=log
        )
        acceptor.start()
        self._acceptors.append(acceptor)
        self.ports[name] = port

    def _connected(self, inside_port: int) -> Callable[[socket.socket, tuple[str, int]], None]:
        """What becomes of a checked connection: a stream into the sandbox."""

        def connected(conn: socket.socket, _address: tuple[str, int]) -> None:
            loop = asyncio.get_running_loop()
            task = loop.create_task(
                loop.connect_accepted_socket(lambda: self._accept(inside_port), conn)
            )

            def settled(done: asyncio.Task[object]) -> None:
                if done.cancelled() or done.exception() is not None:
                    reset(conn)

            task.add_done_callback(settled)

        return connected

    def _accept(self, inside_port: int) -> asyncio.BaseProtocol:
        session = self.session
        if session is None or not session.ready or session.dead.is_set():
            return _Refuse()
        try:
            return session.open_stream(inside_port)
        except Exception:
            return _Refuse()

    async def close(self) -> None:
        """Close the listening sockets at once (on the relay loop); open connections are
        the session's, which aborts them."""
        acceptors, self._acceptors = self._acceptors, []
        for acceptor in acceptors:
            acceptor.close()
        self.ports = {}
