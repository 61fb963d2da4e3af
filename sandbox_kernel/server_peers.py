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

from .relay.accept import GatedAcceptor

# Connections a second (and at once) one server socket accepts: the hub's proxy opens a
# connection per proxied request, and JupyterLab makes a hundred requests as it loads.
SERVER_ACCEPT_RATE = 1000.0
SERVER_ACCEPT_BURST = 512
INET = (socket.AF_INET, socket.AF_INET6)


def gate_http_server(http_server: Any, log: Any) -> None:
    """Make ``http_server`` (a tornado ``HTTPServer`` not yet listening) accept through a
    :class:`GatedAcceptor` on each TCP socket it is given."""
    plain_add_sockets = http_server.add_sockets

    def add_sockets(sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            if sock.family not in INET:
                plain_add_sockets([sock])
                continue
            address = sock.getsockname()
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
