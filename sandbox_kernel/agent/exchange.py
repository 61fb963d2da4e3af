"""The agent's side of the deliberate exchanges with the host (standard library only).

Shipped into the sandbox with the agent (``bundle.py``). Three jobs:

* requests to the host (``expose``, ``export_begin``, ``export_end``, through
  ``mux.Requests``) and the answer to the host's ``put_done``;
* :class:`FileReceiver`: writes the files the host copies in (``put_dir``,
  ``put_begin``/``put_data``/``put_end``) under the kernel's home.
* :class:`HelperServer`: the unix socket that the ``sandboxed`` module (kernel
  side) talks to; it turns a kernel's request into a host request and answers.

Everything arriving from the kernel is untrusted; the host decides every request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from ..relay import mux as m

# The agent's own files inside the sandbox (tmpfs). SANDBOX_KERNEL_RUN_DIR in the agent's
# environment moves them (tests run the agent outside a sandbox).
RUN_DIR = os.environ.get("SANDBOX_KERNEL_RUN_DIR", "/tmp/.sandbox-kernel")
HELPER_DIR = RUN_DIR + "/lib"
SOCKET_PATH = RUN_DIR + "/agent.sock"
SOCKET_ENV = "SANDBOX_KERNEL_AGENT_SOCKET"  # tells the sandboxed module where to ask
MAX_REQUEST_LINE = 64 * 1024


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
            if op == "put_dir":
                os.makedirs(self._path(msg["path"]), mode=0o755, exist_ok=True)
            elif op == "put_begin":
                self._close()
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                mode = int(msg.get("mode", 0o644)) & 0o755
                self.fd = os.open(self._path(msg["path"]), flags, mode)
            elif op == "put_data":
                data = base64.b64decode(msg["data"])
                view = memoryview(data)
                while view and self.fd is not None:
                    view = view[os.write(self.fd, view) :]
                self.bytes += len(data)
            elif op == "put_end":
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
    """Answers the kernel's ``sandboxed`` requests, one JSON line each way."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.exposed: dict[int, int] = {}  # sandbox port -> host port
        self.export_lock = asyncio.Lock()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        try:
            os.unlink(SOCKET_PATH)
        except OSError:
            pass
        self.server = await asyncio.start_unix_server(
            self._client, SOCKET_PATH, limit=MAX_REQUEST_LINE
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line.decode())
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                answer = await self.answer(request)
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": "bad request: %s" % exc}
            except asyncio.TimeoutError:
                answer = {"ok": False, "error": "the host did not answer in time"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ports":
            return {"ok": True, "ports": {str(k): v for k, v in self.exposed.items()}}
        if op == "expose":
            port = int(request["port"])
            if port in self.exposed:
                return {"ok": True, "host_port": self.exposed[port]}
            reply: dict[str, Any] = await self.agent.requests.ask({"op": "expose", "port": port})
            if reply.get("ok"):
                self.exposed[port] = int(reply["host_port"])
            return reply
        if op == "export":
            async with self.export_lock:  # one file at a time on the pipe
                return await self.export(str(request["path"]), str(request["name"]))
        return {"ok": False, "error": "unknown request %r" % (op,)}

    async def export(self, path: str, name: str) -> dict[str, Any]:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            return {"ok": False, "error": "cannot read %s: %s" % (path, exc.strerror)}
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            begin = {"op": "export_begin", "name": name, "size": size}
            reply: dict[str, Any] = await self.agent.requests.ask(begin)
            if not reply.get("ok"):
                return reply
            await m.send_file_data(self.agent.mux, f, size, "export_data")
            reply = await self.agent.requests.ask({"op": "export_end"})
            return reply


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
