"""The server extension's pieces on a real tornado HTTPServer (own user only: another
user's connection is tried for real in tests/integration/test_hub_config.py and
test_hub.py): the gated accept serves us, the body budget cuts what is read at once."""

from __future__ import annotations

import asyncio
import errno
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tornado import httpserver, web

from sandbox_kernel.relay.accept import GatedAcceptor
from sandbox_kernel.server_peers import BodyBudget, gate_http_server


class Echo(web.RequestHandler):
    def post(self) -> None:
        self.write(str(len(self.request.body)))


@pytest.fixture
def server() -> Iterator[tuple[int, BodyBudget]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    budget = BodyBudget(limit=1 << 20)
    holder: dict[str, httpserver.HTTPServer] = {}

    async def start() -> int:
        srv = httpserver.HTTPServer(web.Application([("/", Echo)]), max_body_size=64 << 20)
        gate_http_server(srv, logging.getLogger("test-server-peers"), budget)
        srv.listen(0, "127.0.0.1")
        holder["srv"] = srv
        return int(next(iter(srv._sockets.values())).getsockname()[1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port, budget
    finally:
        loop.call_soon_threadsafe(holder["srv"].stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def post(port: int, size: int) -> tuple[int, bytes]:
    """Status and body; (0, b"") if the server closed the connection mid-body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=b"x" * size)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (ConnectionResetError, BrokenPipeError):
        return 0, b""
    finally:
        conn.close()


def test_our_requests_are_served_and_bodies_over_the_budget_are_cut(
    server: tuple[int, BodyBudget],
) -> None:
    port, budget = server
    assert post(port, 512 * 1024) == (200, b"524288")
    # Over the 1 MiB of bodies being read at once: a 400, or reset while still sending.
    assert post(port, 2 << 20)[0] in (400, 0)
    assert post(port, 1000) == (200, b"1000")  # what the cut request held was given back
    assert budget.held == 0


def test_the_body_budget_counts() -> None:
    budget = BodyBudget(limit=10)
    assert budget.take(6) and not budget.take(5) and budget.take(4)
    budget.give(10)
    assert budget.held == 0


class FailingAccept(socket.socket):
    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_a_failing_accept_pauses_instead_of_spinning(caplog: pytest.LogCaptureFixture) -> None:
    """Out of descriptors, a listening socket stays readable: accepting pauses a second
    and logs once, instead of the loop calling the reader again and again."""
    sock = FailingAccept()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    calls = []
    loop = asyncio.new_event_loop()
    acceptor = GatedAcceptor(sock, lambda c, a: None, what="test port",
                             log=logging.getLogger("test-emfile"))  # fmt: skip
    plain = acceptor._on_readable

    def counted() -> None:
        calls.append(time.monotonic())
        plain()

    acceptor._on_readable = counted  # type: ignore[method-assign]

    async def run() -> None:
        acceptor.start()
        with socket.create_connection(sock.getsockname()):
            await asyncio.sleep(1.5)
        acceptor.close()

    with caplog.at_level(logging.WARNING, "test-emfile"):
        loop.run_until_complete(run())
    loop.close()
    assert 1 <= len(calls) <= 3, len(calls)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "accepting paused" in lines[0], lines
