"""The host's side of exposed ports and exported files, for one kernel.

The provisioner creates one :class:`HostExchange` per kernel in ``pre_launch``
(it lives across restarts, so ports and export budgets do too), binds the
operator's ``expose_ports`` with :meth:`open_configured`, and hands each new
sandbox session to :meth:`attach`. From then on the agent's requests
(``expose``, ``export_*``; see ``relay/session.py``) arrive in :meth:`handle`
on the relay loop. Every request comes from untrusted code: each is checked
against the :class:`ExchangePolicy`, logged, and refused with a reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ..errors import PolicyError
from ..inside import ops
from ..relay.listeners import HOST, HostListeners
from ..relay.session import AgentSession
from ..settings import format_size
from .policy import ExchangePolicy, check_port, export_name, numbered_name

EXPOSED_PREFIX = "expose:"
MAX_NAME_TRIES = 1000


@dataclass
class _Export:
    """A file being received: written under a temporary name, renamed when complete."""

    dir_fd: int
    fd: int
    temp: str
    name: str
    size: int
    received: int = 0


class HostExchange:
    def __init__(
        self,
        policy: ExchangePolicy,
        listeners: HostListeners,
        notebook_dir: str,
        log: logging.Logger,
        kernel_id: str = "",
    ) -> None:
        self.policy = policy
        self.listeners = listeners
        self.notebook_dir = notebook_dir
        self.log = log
        self.kernel_id = kernel_id
        self.runtime_ports: set[int] = set()
        self._binding: set[int] = set()  # runtime ports being bound (their slots are taken)
        self.exported_bytes = 0
        self.exported_files = 0
        self.session: AgentSession | None = None
        self._export: _Export | None = None
        self._refused: str | None = None  # why the current export was stopped
        self._tasks: set[asyncio.Task[None]] = set()

    # -- ports ----------------------------------------------------------------------------
    async def open_configured(self) -> None:
        """On the relay loop: bind the operator's ``expose_ports`` on 127.0.0.1."""
        for mapping in self.policy.expose:
            try:
                await self.listeners.add(
                    EXPOSED_PREFIX + str(mapping.inside), mapping.inside, mapping.host
                )
            except OSError as exc:
                raise PolicyError(
                    f"expose_ports: cannot listen on {HOST}:{mapping.host or 'any'} for sandbox "
                    f"port {mapping.inside}: {exc.strerror}"
                ) from None

    def exposed(self) -> dict[int, int]:
        """Sandbox port -> host port for every exposed port."""
        return {
            self.listeners.inside_ports[name]: port
            for name, port in self.listeners.ports.items()
            if name.startswith(EXPOSED_PREFIX)
        }

    def _expose(self, port: object) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        """Check an ``expose`` request now (on the relay loop, before any ``await``): an
        answer, or the binding still to do. A port being bound holds its slot of
        ``max_runtime_ports`` from this moment, so a burst of requests cannot pass it."""
        try:
            inside = check_port(port, "expose")
        except PolicyError as exc:
            return {"ok": False, "error": str(exc)}
        known = self.exposed()
        if inside in known:
            return {"ok": True, "host_port": known[inside]}
        if inside in self._binding:
            return {"ok": False, "error": f"port {inside} is being exposed; ask again"}
        limit = self.policy.max_runtime_ports
        if len(self.runtime_ports) + len(self._binding) >= limit:
            return {
                "ok": False,
                "error": f"this kernel may expose at most {limit} port(s) at run time "
                "(max_runtime_ports); ask the operator to list it in expose_ports",
            }
        self._binding.add(inside)
        return self._bind(inside)

    async def _bind(self, inside: int) -> dict[str, Any]:
        try:
            host = await self.listeners.add(EXPOSED_PREFIX + str(inside), inside)
        except OSError as exc:
            return {"ok": False, "error": f"cannot listen on the host: {exc.strerror}"}
        finally:
            self._binding.discard(inside)
        self.runtime_ports.add(inside)
        self.log.warning(
            "sandbox-kernel %s: the kernel exposed its port %d at http://%s:%d/",
            self.kernel_id,
            inside,
            HOST,
            host,
        )
        return {"ok": True, "host_port": host}

    # -- the agent's requests ----------------------------------------------------------------
    def attach(self, session: AgentSession) -> None:
        """A new sandbox (start or restart) takes requests from now on."""
        self.detach()
        self.session = session
        session.on_request = self.handle

    def detach(self) -> None:
        """The sandbox is going: a file half received is deleted."""
        if self.session is not None:
            self.session.on_request = None
            self.session = None
        self._abort_export()

    def handle(self, msg: dict[str, Any]) -> None:
        session = self.session
        if session is None:
            return
        op = msg["op"]
        if op == ops.EXPOSE:
            answer = self._expose(msg.get("port"))
            if isinstance(answer, dict):
                self._reply(msg, answer)
                return
            task = asyncio.get_running_loop().create_task(self._answer(msg, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == ops.EXPORT_BEGIN:
            self._reply(msg, self._export_begin(msg.get("name"), msg.get("size")))
        elif op == ops.EXPORT_DATA:
            self._export_data(msg.get("data"))
        elif op == ops.EXPORT_END:
            self._reply(msg, self._export_end())

    async def _answer(
        self, msg: dict[str, Any], answer: Coroutine[Any, Any, dict[str, Any]]
    ) -> None:
        self._reply(msg, await answer)

    def _reply(self, msg: dict[str, Any], answer: dict[str, Any]) -> None:
        req = msg.get("req")
        # Only a request id is echoed, never anything else the sandbox chose.
        if self.session is not None and isinstance(req, int) and 0 <= req < 2**53:
            self.session.send_control({"op": ops.REPLY, "req": req, **answer})

    # -- files out ------------------------------------------------------------------------------
    def _export_begin(self, requested: object, size: object) -> dict[str, Any]:
        self._abort_export()
        self._refused = None
        policy = self.policy
        if policy.export_bytes <= 0:
            return {"ok": False, "error": "exporting files is disabled (export_limit=0)"}
        try:
            name = export_name(requested)
        except PolicyError as exc:
            return {"ok": False, "error": str(exc)}
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return {"ok": False, "error": "bad size"}
        left = policy.export_bytes - self.exported_bytes
        if size > left:
            return {
                "ok": False,
                "error": f"{name} ({format_size(size)}) exceeds what this kernel may still "
                f"export: {format_size(max(left, 0))} of export_limit="
                f"{format_size(policy.export_bytes)}",
            }
        if self.exported_files >= policy.export_files:
            return {"ok": False, "error": f"at most {policy.export_files} files per kernel"}
        try:
            dir_fd = self._open_export_dir()
        except OSError as exc:
            return {"ok": False, "error": f"cannot write to the export folder: {exc.strerror}"}
        temp = f".{name}.part-{os.getpid()}-{id(self)}"
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
            )
        except OSError as exc:
            os.close(dir_fd)
            return {"ok": False, "error": f"cannot create {name}: {exc.strerror}"}
        self._export = _Export(dir_fd, fd, temp, name, size)
        return {"ok": True}

    def _open_export_dir(self) -> int:
        """The export folder inside the notebook's folder, never through a symbolic link."""
        base = os.open(self.notebook_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                os.mkdir(self.policy.export_dir, 0o755, dir_fd=base)
            except FileExistsError:
                pass
            return os.open(
                self.policy.export_dir,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                dir_fd=base,
            )
        finally:
            os.close(base)

    def _export_data(self, data: object) -> None:
        current = self._export
        if current is None:
            return
        try:
            chunk = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            self._abort_export("malformed data")
            return
        current.received += len(chunk)
        if current.received > current.size:
            self._abort_export("more data than announced")
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(current.fd, view) :]
        except OSError as exc:
            self._abort_export(exc.strerror or "write failed")

    def _export_end(self) -> dict[str, Any]:
        current, self._export = self._export, None
        if current is None:
            return {"ok": False, "error": f"export refused: {self._refused or 'not begun'}"}
        try:
            os.close(current.fd)
            if current.received != current.size:
                raise OSError(errno.EIO, "the file changed while it was sent")
            final = self._link_unique(current)
        except OSError as exc:
            self._unlink(current)
            os.close(current.dir_fd)
            return {"ok": False, "error": f"export failed: {exc.strerror}"}
        os.unlink(current.temp, dir_fd=current.dir_fd)
        os.close(current.dir_fd)
        self.exported_bytes += current.size
        self.exported_files += 1
        rel = os.path.join(self.policy.export_dir, final)
        self.log.warning(
            "sandbox-kernel %s: the kernel exported %s (%s) to %s",
            self.kernel_id,
            final,
            format_size(current.size),
            os.path.join(self.notebook_dir, rel),
        )
        return {"ok": True, "path": rel}

    @staticmethod
    def _link_unique(current: _Export) -> str:
        """Give the complete file its name; an existing file is never replaced."""
        for n in range(MAX_NAME_TRIES):
            name = numbered_name(current.name, n)
            try:
                os.link(current.temp, name, src_dir_fd=current.dir_fd, dst_dir_fd=current.dir_fd)
                return name
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, f"too many files named like {current.name}")

    def _abort_export(self, why: str | None = None) -> None:
        current, self._export = self._export, None
        if current is None:
            return
        if why:
            self._refused = why
            self.log.warning(
                "sandbox-kernel %s: export of %s refused: %s", self.kernel_id, current.name, why
            )
        try:
            os.close(current.fd)
        except OSError:
            pass
        self._unlink(current)
        os.close(current.dir_fd)

    @staticmethod
    def _unlink(current: _Export) -> None:
        try:
            os.unlink(current.temp, dir_fd=current.dir_fd)
        except OSError:
            pass
