"""The interface between the provisioner and an isolation backend.

The provisioner owns the lifecycle and the relay; a backend only knows how to check a
host, create, start, attach to, signal and remove one sandbox, and (for the CLI) list
its sandboxes and remove orphans. Nothing outside ``backends/`` knows how a backend does
it: Docker's attach stream, OCI bundles and sandbox tools stay in their modules.

Who calls what: ``provisioner.py`` and ``pool.py`` (through ``boot.py``) call
``preflight``, ``create``, ``attach``, ``start``, then ``claimed`` (a pooled sandbox
taken by a kernel), ``kill`` and ``remove``; ``doctor.py`` calls ``preflight`` and
``gaps``; ``sandbox-kernel ps`` and ``gc`` call ``list_sandboxes`` and
``remove_orphans``. The async methods must not block the caller's loop (blocking work
goes to worker threads); ``gaps``, ``list_sandboxes`` and ``remove_orphans`` block.

Snapshots (optional): a backend whose ``snapshots`` says so can ``checkpoint`` a warm
pool's pre-initialised sandbox into a snapshot and ``restore`` new sandboxes from it
(``pool.py`` through ``boot.restore``), each a sandbox of its own, then removed as any
other; ``remove_snapshot`` deletes a snapshot. The default: not supported.

Adding a backend: one module with a subclass, its entry in ``registry.py`` and its rows
in the gap table (``security/expectations.py``).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SandboxError

if TYPE_CHECKING:  # annotations only: the interface needs neither at run time
    from ..policy import SandboxPolicy
    from ..relay.session import AgentSession
    from .owner import Owner


@dataclass(frozen=True)
class Preflight:
    """What a backend found on this host for a policy."""

    runtime: str  # what will actually run the sandbox (for logs and `ps`)
    warnings: tuple[str, ...] = ()
    # The sandbox runs a kernel of its own (gVisor): the agent's reported release must not
    # be the host's, or gVisor is not in effect.
    foreign_kernel: bool = False
    # The agent starts as root of the sandbox and runs the kernel under the policy's user,
    # so kernel code cannot reach the agent's pipe or process. False: both share the
    # policy's uid, and the host kernel keeps the agent's descriptors (undumpable) and, as
    # PID 1, its signals out of the kernel's reach.
    kernel_user_apart: bool = False
    # The sandbox sets no resource limits of its own (a pod spec cannot): the agent sets
    # the policy's nproc and nofile on the kernel (boot.kernel_rlimits).
    agent_rlimits: bool = False


@dataclass(frozen=True)
class Snapshots:
    """Whether and how a warm pool may fill itself from snapshots (``SandboxBackend.snapshots``)."""

    available: bool
    # Why not, where the settings ask for snapshots and this host cannot give them (for the
    # log and doctor); '' when available or turned off on purpose.
    note: str = ""
    max_restores: int = 0  # restores of one snapshot before the pool makes a new one
    max_age: float = 0.0  # seconds a snapshot is restored from before the pool makes a new one


@dataclass(frozen=True)
class SandboxInfo:
    """One row of ``sandbox-kernel ps``."""

    backend: str
    name: str
    id: str
    kernel_id: str
    pooled: bool
    user: str
    server_pid: int
    uptime_s: float
    memory_mib: float | None  # None where the backend cannot tell
    cpu_percent: float | None = None  # None where the backend cannot tell
    # "sandbox", or "snapshot": a warm pool's checkpoint image on disk (no process; its
    # size in disk_mib), removed with its pool or by gc
    kind: str = "sandbox"
    disk_mib: float = 0.0


# remove_orphans implementations already run at a first launch in this process.
_REAPED: set[object] = set()


class SandboxBackend(ABC):
    name: ClassVar[str]
    # Shown in Jupyter's launcher: the isolation tier is part of the kernel's name.
    label: ClassVar[str]

    def __init__(self, log: logging.Logger | None = None, **settings: Any) -> None:
        """``settings``: the kernelspec's values of the settings this backend reads
        (``settings.py``, those declared for its name)."""
        self.log = log or logging.getLogger(__name__)

    # -- a launch ---------------------------------------------------------------------------
    @abstractmethod
    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        """Check the host can enforce ``policy``; raise SandboxError naming the fix."""

    @abstractmethod
    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        """Create (not start) a sandbox whose stdin/stdout will be the agent's pipe; store
        ``owner`` with it. Returns its id."""

    @abstractmethod
    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        """Connect ``session`` to the sandbox's stdin/stdout (its raw bytes both ways;
        set ``session.escape_stdin`` if the channel needs it)."""

    @abstractmethod
    async def start(self, sandbox_id: str) -> None: ...

    async def claimed(self, sandbox_id: str, owner: Owner) -> None:
        """A pooled sandbox now serves ``owner.kernel_id``: record it where ``ps`` looks
        (best effort; a backend that cannot does nothing)."""
        return None

    @abstractmethod
    async def kill(self, sandbox_id: str) -> None:
        """Stop the whole sandbox at once; no error if it is already gone."""

    @abstractmethod
    async def remove(self, sandbox_id: str) -> None:
        """Remove every trace of the sandbox; no error if it is already gone."""

    # -- snapshots (optional; see the module's docstring) -----------------------------------
    def snapshots(self) -> Snapshots:
        """Whether this backend, with its settings and on this host, can checkpoint a pooled
        sandbox and restore copies of it (cheap; no host check beyond what it already knows)."""
        return Snapshots(False)

    async def checkpoint(self, sandbox_id: str, owner: Owner) -> str:
        """Save a running, idle sandbox's whole state (its agent and pre-initialised kernel)
        as a snapshot of ``owner``'s and end the sandbox (the caller still removes it).
        Returns the snapshot's id."""
        raise SandboxError(f"the {self.name} backend has no snapshots")

    async def restore(
        self,
        snapshot: str,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        owner: Owner,
        name: str,
    ) -> str:
        """A new sandbox restored from ``snapshot`` (made under the same settings and policy),
        with a name, cgroup and pipes of its own; then ``attach`` and ``start`` as after
        ``create``. Its agent already runs: it gets no bundle and sends no hello (the caller
        asks it to ``resume``). Returns its id."""
        raise SandboxError(f"the {self.name} backend has no snapshots")

    async def remove_snapshot(self, snapshot: str) -> None:
        """Delete a snapshot; no error if it is already gone."""
        return None

    # -- the host and the CLI (blocking) ----------------------------------------------------
    def inspect(self, sandbox_id: str) -> dict[str, str]:
        """What the backend itself reports of a running sandbox (e.g. ``runtime``), for
        ``doctor``'s look from outside; {} where it has nothing to add."""
        return {}

    def gaps(self, policy: SandboxPolicy) -> Mapping[str, str]:
        """Policy properties this host cannot enforce (property -> why and the fix), for
        ``doctor``; the preflight refuses a launch on any gap not accepted."""
        return {}

    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        """This backend's running sandboxes that the caller may see."""
        return []

    @classmethod
    def remove_orphans(cls) -> list[str]:
        """Remove sandboxes (and what belongs to them) whose Jupyter process is gone;
        return their names."""
        return []

    async def reap_orphans_once(self) -> None:
        """Called by a backend's ``preflight``: once per process and implementation (docker
        and docker-runc share one), at the first launch, :meth:`remove_orphans` in a worker
        thread. A failure to look is logged; the launch goes on (``gc`` says it loudly)."""
        key = getattr(type(self).remove_orphans, "__func__", type(self).remove_orphans)
        if key in _REAPED:
            return
        _REAPED.add(key)
        try:
            removed = await asyncio.to_thread(self.remove_orphans)
        except SandboxError as exc:
            self.log.warning("could not look for leftover %s sandboxes: %s", self.name, exc)
            return
        if removed:
            self.log.warning(
                "removed %s sandboxes left by dead Jupyter processes: %s", self.name, removed
            )

    def describe(self) -> dict[str, Any]:
        """The backend and its settings: sandboxes of equal descriptions (and policies) are
        interchangeable, e.g. in one warm pool."""
        return {"backend": self.name}
