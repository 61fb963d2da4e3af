"""The agent's side of the deliberate exchanges with the host (standard library only).

Shipped into the sandbox with the agent (``bundle.py``). Three jobs:

* requests to the host (``expose``, ``export_begin``, ``export_end``, through
  ``mux.Requests``) and the answer to the host's ``put_done``;
* :class:`FileReceiver`: writes the files the host copies in (``put_dir``,
  ``put_begin``/``put_data``/``put_end``) under the kernel's home.
* :class:`HelperServer`: the unix socket that the ``sandboxed`` module (kernel
  side) talks to; it turns a kernel's request into a host request and answers.

Everything arriving from the kernel is untrusted; the host decides every request.
The agent opens no path the kernel chose (files to export arrive as open descriptors)
and bounds what a kernel can make it hold: connections, request size, time.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import os
import socket
import stat
from typing import Any

from . import mux as m
from . import ops as o

# The agent's own files inside the sandbox (tmpfs), apart from the kernel's folder
# (/tmp/.sandbox-kernel, the connection file). SANDBOX_KERNEL_RUN_DIR in the agent's
# environment moves them (tests run the agent outside a sandbox).
RUN_DIR = os.environ.get("SANDBOX_KERNEL_RUN_DIR", "/tmp/.sandbox-agent")
HELPER_DIR = RUN_DIR + "/lib"
SOCKET_PATH = RUN_DIR + "/agent.sock"
SOCKET_ENV = "SANDBOX_KERNEL_AGENT_SOCKET"  # tells the sandboxed module where to ask
MAX_REQUEST_LINE = 64 * 1024
MAX_CLIENTS = 8  # kernel requests served at once; more connections are closed
MAX_FDS = 1  # file descriptors kept per request (an export's file)
MAX_NAME = 1024  # characters of a requested export name passed on to the host
CLIENT_TIMEOUT = 30.0  # to send a request
REQUEST_TIMEOUT = 600.0  # to answer one (a large export over a busy pipe)


class FileReceiver:
    """Files copied in by the host, written under ``home`` (which the sandbox owns)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.fd: int | None = None
        self.files = 0
        self.bytes = 0
        self.error: str | None = None

    def _path(self, rel: object) -> str:
        parts = str(rel).split("/")
        if any(p in ("", ".", "..") for p in parts) or "\0" in str(rel):
            raise ValueError("bad path %r" % rel)
        return os.path.join(self.home, *parts)

    def handle(self, msg: dict[str, Any]) -> None:
        if self.error is not None:
            return  # the first error is reported at put_done
        try:
            op = msg["op"]
            if op == o.PUT_DIR:
                os.makedirs(self._path(msg["path"]), mode=0o755, exist_ok=True)
            elif op == o.PUT_BEGIN:
                self._close()
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                mode = int(msg.get("mode", 0o644)) & 0o755
                self.fd = os.open(self._path(msg["path"]), flags, mode)
            elif op == o.PUT_DATA:
                data = base64.b64decode(msg["data"])
                view = memoryview(data)
                while view and self.fd is not None:
                    view = view[os.write(self.fd, view) :]
                self.bytes += len(data)
            elif op == o.PUT_END:
                self._close()
                self.files += 1
        except Exception as exc:
            self._close()
            self.error = "%s: %s" % (type(exc).__name__, exc)

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def result(self) -> dict[str, Any]:
        self._close()
        if self.error is not None:
            return {"ok": False, "error": "copying files in failed: " + self.error}
        return {"ok": True, "files": self.files, "bytes": self.bytes}


class HelperServer:
    """Answers the kernel's ``sandboxed`` requests: one JSON line each way per connection,
    an exported file passed as an open file descriptor (``SCM_RIGHTS``) with the request.

    The agent never opens a path the kernel names: the kernel opens the file itself,
    with its own rights, and only a regular file is read. At most MAX_CLIENTS requests are
    served at once, each within CLIENT_TIMEOUT."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.exposed: dict[int, int] = {}  # sandbox port -> host port
        self.export_lock = asyncio.Lock()
        self.listener: socket.socket | None = None
        self.clients = 0

    async def start(self, shared: bool = False) -> None:
        """Listen on SOCKET_PATH. ``shared``: the kernel runs under another uid than the
        agent, so the socket is open to every uid (the folder stays the agent's)."""
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        try:
            os.unlink(SOCKET_PATH)
        except OSError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(SOCKET_PATH)
        os.chmod(SOCKET_PATH, 0o666 if shared else 0o600)
        listener.listen(MAX_CLIENTS)
        listener.setblocking(False)
        self.listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if self.clients >= MAX_CLIENTS:
            conn.close()  # the kernel may retry; nothing it sends can queue up here
            return
        conn.setblocking(False)
        self.clients += 1
        task = asyncio.get_running_loop().create_task(self._client(conn))
        task.add_done_callback(lambda _t: self._done())

    def _done(self) -> None:
        self.clients -= 1

    async def _client(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            try:
                line = await asyncio.wait_for(_recv_request(conn, fds), CLIENT_TIMEOUT)
                request = json.loads(line.decode())
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                answer = await asyncio.wait_for(self.answer(request, fds), REQUEST_TIMEOUT)
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": "bad request: %s" % _short(exc)}
            except asyncio.TimeoutError:
                answer = {"ok": False, "error": "timed out"}
            data = json.dumps(answer).encode() + b"\n"
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(conn, data), 10)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    async def answer(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ports":
            return {"ok": True, "ports": {str(k): v for k, v in self.exposed.items()}}
        if op == "expose":
            port = int(request["port"])
            if port in self.exposed:
                return {"ok": True, "host_port": self.exposed[port]}
            reply: dict[str, Any] = await self.agent.requests.ask({"op": o.EXPOSE, "port": port})
            if reply.get("ok"):
                self.exposed[port] = int(reply["host_port"])
            return reply
        if op == "export":
            if len(fds) != 1:
                return {"ok": False, "error": "export needs exactly one open file"}
            if self.export_lock.locked():
                return {"ok": False, "error": "another export is in progress"}
            async with self.export_lock:  # one file at a time on the pipe
                return await self.export(fds[0], str(request["name"])[:MAX_NAME])
        return {"ok": False, "error": "unknown request %s" % _short(op)}

    async def export(self, fd: int, name: str) -> dict[str, Any]:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"ok": False, "error": "only regular files can be exported"}
        size = st.st_size
        begin = {"op": o.EXPORT_BEGIN, "name": name, "size": size}
        reply: dict[str, Any] = await self.agent.requests.ask(begin)
        if not reply.get("ok"):
            return reply
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            await m.send_file_data(self.agent.mux, f, size, o.EXPORT_DATA)
        reply = await self.agent.requests.ask({"op": o.EXPORT_END})
        return reply


async def _recv_request(conn: socket.socket, fds: list[int]) -> bytes:
    """One request line (at most MAX_REQUEST_LINE bytes) and the file descriptors sent
    with it (at most one is kept; any others are closed at once)."""
    loop = asyncio.get_running_loop()
    data = b""
    space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    while not data.endswith(b"\n"):
        if len(data) > MAX_REQUEST_LINE:
            raise ValueError("request too long")
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())
        try:
            chunk, ancdata, _flags, _addr = conn.recvmsg(65536, space)
        except BlockingIOError:
            continue
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(cdata[: len(cdata) - (len(cdata) % got.itemsize)])
                fds.extend(got)
        while len(fds) > MAX_FDS:
            os.close(fds.pop())
        if not chunk:
            break
        data += chunk
    return data


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # readable again before the waiter ran
        fut.set_result(None)


def _short(value: object, limit: int = 200) -> str:
    """An attacker-chosen value, as a bounded ``repr`` for a reply."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def install_helpers(helpers: dict[str, str]) -> None:
    """Write the kernel-side helper modules (``sandboxed.py``) where PYTHONPATH points."""
    os.makedirs(HELPER_DIR, mode=0o755, exist_ok=True)
    for name, source in helpers.items():
        with open(os.path.join(HELPER_DIR, os.path.basename(name)), "w") as f:
            f.write(source)


def with_helper_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the helper folder first on PYTHONPATH, and the agent's socket."""
    current = env.get("PYTHONPATH")
    env = dict(env)
    env["PYTHONPATH"] = HELPER_DIR + (os.pathsep + current if current else "")
    env[SOCKET_ENV] = SOCKET_PATH
    return env
