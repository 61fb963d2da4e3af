"""A Jupyter server extension: the server's TCP port serves only its own user and root.

Under JupyterHub with real Unix users (docs/jupyterhub.md, recipe (a)) each user's server
listens on the host's 127.0.0.1, where every other local user can connect. Tornado reads
a whole request body before any handler authenticates it, and holds an idle connection's
descriptor for as long as the peer likes: another user could grow the server until it is
killed for memory, or take it to its descriptor limit. So this extension replaces
tornado's accept loop on each of the server's TCP sockets with
:class:`~sandbox_kernel.relay.accept.GatedAcceptor`: the owner of every connecting socket
is looked up (sock_diag, off the loop), and only the server's own user and root (the
hub's proxy and the hub, which run as root in that recipe) are served; anyone else's
connection is reset before tornado sees a byte of it. Accepting is bounded per socket
(``SERVER_ACCEPT_RATE``), pauses instead of spinning when the server is out of
descriptors, and what it logs is at most a line per 10 s per socket.

The hub's proxy is let in, and it forwards anyone's request, signed in or not. Tornado
reads each request body whole before the handler that would refuse it runs; the shared
server config caps one body (``max_body_size``), and :class:`BodyBudget` caps the bodies
being read at once: a request whose bytes would take the total past
``MAX_BODY_BYTES_IN_FLIGHT`` is answered 400 and its connection closed.

Enabled by ``c.ServerApp.jpserver_extensions`` (docs/examples/jupyter_server_config.py);
jupyter_server calls :func:`_load_jupyter_server_extension` before it creates its HTTP
server, so the gate is in place before the first socket is bound. A Unix socket
(``ServerApp.sock``) is left to tornado: its file mode decides who may connect.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from tornado import httputil

from .relay.accept import GatedAcceptor

# Connections a second (and at once) one server socket accepts, and its listen backlog.
# The hub's proxy opens a connection per proxied request, and the user's own wait in the
# same queue as another user's flood: the queue is drained fast (a refused connection
# costs this loop tens of microseconds), so that only a flood faster than this rate
# delays the user's new connections (open ones, like a kernel's websocket, never wait).
SERVER_ACCEPT_RATE = 5000.0
SERVER_ACCEPT_BURST = 1024
SERVER_BACKLOG = 1024
INET = (socket.AF_INET, socket.AF_INET6)
# Bytes of request bodies the server holds at once while reading them: one notebook of
# max_body_size (64 MiB) and what else is in flight (uploads go in 1 MiB chunks).
MAX_BODY_BYTES_IN_FLIGHT = 96 * 1024 * 1024


class BodyBudget:
    """Request body bytes being read, all requests together (pure counting)."""

    def __init__(self, limit: int = MAX_BODY_BYTES_IN_FLIGHT) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class CountedBody(httputil.HTTPMessageDelegate):
    """One request's delegate, its body bytes counted against ``budget`` until the request
    is read (``finish``) or its connection ends."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, budget: BodyBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.held = 0

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if not self.budget.take(len(chunk)):
            self._release()
            # tornado answers 400, closes the connection and logs one line (info).
            raise httputil.HTTPInputError(
                f"request bodies being read would pass {self.budget.limit} bytes"
            )
        self.held += len(chunk)
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self._release()
        self.inner.finish()

    def on_connection_close(self) -> None:
        self._release()
        self.inner.on_connection_close()

    def _release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


def gate_http_server(http_server: Any, log: Any, budget: BodyBudget | None = None) -> None:
    """Make ``http_server`` (a tornado ``HTTPServer`` not yet listening) accept through a
    :class:`GatedAcceptor` on each TCP socket it is given, and count the request bodies
    it reads against one :class:`BodyBudget`."""
    plain_add_sockets = http_server.add_sockets
    plain_start_request = http_server.start_request
    budget = budget or BodyBudget()

    def start_request(server_conn: object, request_conn: Any) -> CountedBody:
        return CountedBody(plain_start_request(server_conn, request_conn), budget)

    def add_sockets(sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            if sock.family not in INET:
                plain_add_sockets([sock])
                continue
            address = sock.getsockname()
            sock.listen(SERVER_BACKLOG)  # tornado's 128 overflows at a burst (the kernel caps it)
            acceptor = GatedAcceptor(
                sock, http_server._handle_connection, what=f"Jupyter server port {address[1]}",
                log=log, rate=SERVER_ACCEPT_RATE, burst=SERVER_ACCEPT_BURST,
            )  # fmt: skip
            acceptor.start()
            # What tornado's stop() expects: the socket by descriptor and an unregister
            # callable (tornado closes the socket itself).
            http_server._sockets[sock.fileno()] = sock
            http_server._handlers[sock.fileno()] = acceptor.stop_accepting

    http_server.add_sockets = add_sockets
    http_server.start_request = start_request


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "sandbox_kernel.server_peers"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server when ``jpserver_extensions`` enables this module, before
    ``init_httpserver``: the gate goes on the HTTP server as soon as it exists. A server
    already listening cannot be gated: that is an error, never a silent pass."""
    existing = getattr(serverapp, "_http_server", None)
    if existing is not None:
        if existing._sockets:
            raise RuntimeError(
                "sandbox_kernel.server_peers was loaded after the server began listening: "
                "enable it in c.ServerApp.jpserver_extensions (a config file), not later"
            )
        gate_http_server(existing, serverapp.log)
    else:
        plain_init = serverapp.init_httpserver

        def init_httpserver() -> None:
            plain_init()
            gate_http_server(serverapp.http_server, serverapp.log)

        serverapp.init_httpserver = init_httpserver
    serverapp.log.info(
        "sandbox-kernel: this server's port serves only uid %d and root", os.geteuid()
    )
