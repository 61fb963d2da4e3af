"""What the backends that spawn their sandboxes themselves share: the pipe backends
(``pipe.py``: bubblewrap, firejail) and the runsc backend (``runsc.py``).

Who calls what: such a backend's ``_spawn`` (run by ``create`` in a worker thread) starts a
sandbox with two pipes as its stdin and stdout and registers what belongs to it in its
class's :class:`Sandboxes`; ``attach`` hands our ends of the pipes to the session (raw
bytes, on the relay loop); ``kill`` and ``remove`` call the subclass's ``_kill_one`` and
``_end_one`` in a worker thread (or inline at interpreter shutdown); ``remove_all`` (at
exit) ends every sandbox still registered. The sandbox tool's stderr is a memfd, whose
tail goes into the error of a failed start or removal (:func:`read_tail`, :func:`tail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..errors import SandboxError
from ..policy import SandboxPolicy
from ..relay.session import AgentSession
from ..relay.thread import RelayThread
from .base import Preflight, SandboxBackend
from .capabilities import check_accepted
from .owner import Owner

STDERR_TAIL = 4000
# The whole environment of a sandbox tool we run: nothing of the server's.
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# The capacity of the pipe a sandbox writes its frames into. At Linux's default 64 KiB the
# agent and the relay take turns per frame; at 1 MiB (fs.pipe-max-size's default, the most
# an unprivileged caller may ask) output through the runsc backend rose from 60-62 to 74-78
# MB/s (docs/performance.md). Host kernel memory, 1 MiB per sandbox at most.
OUTPUT_PIPE_SIZE = 1 << 20


def output_pipe() -> tuple[int, int]:
    """A new pipe (read end, write end) for a sandbox's stdout, enlarged to
    :data:`OUTPUT_PIPE_SIZE` where the host allows it (a user over ``pipe-user-pages-soft``,
    or a lower ``pipe-max-size``, keeps the default: only throughput depends on it)."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, OUTPUT_PIPE_SIZE)
    return read_end, write_end


class Piped(Protocol):
    """What a spawned sandbox's record has for ``attach``."""

    pipes: tuple[int, int] | None  # our ends (its stdin, its stdout) until a session takes them


T = TypeVar("T")
S = TypeVar("S", bound=Piped)


class Registry(dict[str, T]):
    """What this process made (sandboxes, snapshots), by id, with the lock that every
    change, and every look from another thread, takes."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def add(self, key: str, value: T) -> None:
        with self.lock:
            self[key] = value

    def find(self, key: str) -> T | None:
        with self.lock:
            return self.get(key)

    def take(self, key: str) -> T | None:
        with self.lock:
            return self.pop(key, None)

    def listed(self) -> list[tuple[str, T]]:
        with self.lock:
            return list(self.items())

    def take_all(self) -> list[tuple[str, T]]:
        with self.lock:
            found = list(self.items())
            self.clear()
        return found


class Sandboxes(Registry[S]):
    """The sandboxes of one backend class in this process. One per class, shared by every
    instance: a warm pool's sandbox is removed by the claiming provisioner's backend
    object, not the pool's."""

    def take_pipes(self, sandbox_id: str) -> tuple[int, int] | None:
        """The sandbox's pipes, once: None if it is gone or already attached."""
        with self.lock:
            sandbox = self.get(sandbox_id)
            pipes = sandbox.pipes if sandbox else None
            if sandbox:
                sandbox.pipes = None
        return pipes


class SpawnedBackend(SandboxBackend, Generic[S]):
    """A backend whose sandbox is a process we start, the agent on its stdin/stdout."""

    tool: ClassVar[str]  # the executable, named in warnings, e.g. "bwrap"
    # Each subclass has its own (its records' type), so remove_all ends only its own.
    _sandboxes: ClassVar[Sandboxes[Any]]

    def __init__(
        self,
        log: logging.Logger | None = None,
        *,
        accept_unenforced: Iterable[str] = (),
        rootfs: str = "",
        **_other: Any,
    ) -> None:
        super().__init__(log)
        self.accept_unenforced = check_accepted(accept_unenforced)
        self.rootfs_override = rootfs

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "rootfs": self.rootfs_override,
            "accept_unenforced": sorted(self.accept_unenforced),
        }

    # -- what subclasses provide (blocking; called in worker threads) ------------------------
    @abstractmethod
    def host_gaps(self, policy: SandboxPolicy) -> tuple[Path, dict[str, str]]:
        """(rootfs, every property this host cannot enforce for ``policy``)."""

    @abstractmethod
    def _spawn(self, policy: SandboxPolicy, command: list[str], name: str, owner: Owner) -> str:
        """Start sandbox ``name`` running ``command``, register it; returns its id."""

    def _claim(self, sandbox: S, owner: Owner) -> None:
        """Record ``owner`` where ``ps`` looks for it (best effort)."""

    @abstractmethod
    def _kill_one(self, sandbox_id: str, sandbox: S) -> None:
        """SIGKILL every process of the sandbox."""

    @classmethod
    @abstractmethod
    def _end_one(cls, sandbox_id: str, sandbox: S) -> str:
        """End the sandbox and remove all that belongs to it; return what its tool said
        that is worth a warning ('' if nothing)."""

    # -- the interface -------------------------------------------------------------------------
    def gaps(self, policy: SandboxPolicy) -> dict[str, str]:
        return self.host_gaps(policy)[1]

    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        return await asyncio.to_thread(self._spawn, policy, command, name, owner)

    async def claimed(self, sandbox_id: str, owner: Owner) -> None:
        sandbox = self._sandboxes.find(sandbox_id)
        if sandbox is not None:
            await asyncio.to_thread(self._claim, sandbox, owner)

    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        pipes = self._sandboxes.take_pipes(sandbox_id)
        if pipes is None:
            raise SandboxError(f"sandbox {sandbox_id} is gone or already attached")
        await RelayThread.get().run(session.attach_pipes(*pipes))

    async def start(self, sandbox_id: str) -> None:
        """Nothing to do: the sandbox runs since ``create`` and the agent waits."""

    def _kill(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.find(sandbox_id)
        if sandbox is not None:
            self._kill_one(sandbox_id, sandbox)

    def _remove(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.take(sandbox_id)
        if sandbox is None:
            return
        err = self._end_one(sandbox_id, sandbox)
        if err:
            self.log.warning("sandbox %s: %s said: %s", sandbox_id, self.tool, err)

    async def kill(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._kill, sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._remove, sandbox_id)
        except RuntimeError:  # interpreter shutdown: no new worker threads, so block instead
            self._remove(sandbox_id)

    @classmethod
    def remove_all(cls) -> None:
        """At exit: remove every sandbox of this process still running (warm-pool sandboxes,
        kernels nobody shut down). Registered with ``atexit`` by each subclass's module."""
        for sandbox_id, sandbox in cls._sandboxes.take_all():
            try:
                cls._end_one(sandbox_id, sandbox)
            except Exception:
                pass


def read_tail(fd: int) -> str:
    """The last STDERR_TAIL bytes of the memfd ``fd``, as text ('' for -1: none)."""
    if fd < 0:
        return ""
    try:
        start = max(0, os.fstat(fd).st_size - STDERR_TAIL)
        return os.pread(fd, STDERR_TAIL, start).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def tail(fd: int) -> str:
    """:func:`read_tail`, then close ``fd``."""
    try:
        return read_tail(fd)
    finally:
        if fd >= 0:
            os.close(fd)
