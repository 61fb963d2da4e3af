"""One running sandbox of a kernel: its backend id and its session, from boot (or a
claim from the warm pool) to removal.

The provisioner (on its caller's event loop) holds one :class:`RunningSandbox` per
start and awaits its methods; each method does its one hop to the relay loop (where the
session lives) or to a worker thread (through the backend), so the provisioner itself
never touches the relay thread. What lives across restarts (listeners, exchange, console,
key) stays with the provisioner.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from dataclasses import dataclass
from typing import Any

from .backends.base import Preflight, SandboxBackend
from .backends.owner import Owner
from .boot import boot, check_kernel, start_kernel
from .exchange.files_in import CopyItem, send_copy_in
from .exchange.host import HostExchange
from .inside import ops
from .policy import SandboxPolicy
from .pool import WarmPool
from .relay.console import ConsoleSink
from .relay.session import AgentSession
from .relay.thread import RelayThread


@dataclass
class KernelLink:
    """What a sandbox must be given to serve one kernel (the provisioner's, per kernel)."""

    kernel_id: str
    console: ConsoleSink
    max_message: int
    exchange: HostExchange
    copy_items: list[CopyItem]


class RunningSandbox:
    def __init__(self, backend: SandboxBackend, sandbox_id: str, session: AgentSession) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.session = session
        self.relay = RelayThread.get()
        self.restored = False  # claimed from the warm pool, restored from its snapshot

    # -- getting one -------------------------------------------------------------------------
    @classmethod
    async def boot(
        cls,
        backend: SandboxBackend,
        policy: SandboxPolicy,
        preflight: Preflight,
        link: KernelLink,
        count: int,
    ) -> RunningSandbox:
        """A new sandbox for ``link``'s kernel (its ``count``-th start), agent running."""
        name = f"sandbox-kernel-{(link.kernel_id or 'anon')[:12]}-{count}-{secrets.token_hex(3)}"
        session = AgentSession(name, console=link.console, log=link.exchange.log)
        _own(session, link)
        owner = Owner.current(kernel_id=link.kernel_id)
        sandbox_id = await boot(backend, policy, preflight, session, name=name, owner=owner)
        return cls(backend, sandbox_id, session)

    @classmethod
    async def claim(
        cls, pool: WarmPool, backend: SandboxBackend, link: KernelLink
    ) -> RunningSandbox | None:
        """A sandbox from the warm pool (ready, or restored now from its snapshot), now
        ``link``'s; None when the pool has none."""
        relay = RelayThread.get()
        pooled = await relay.run(pool.claim())
        if pooled is None:
            return None
        _own(pooled.session, link)
        running = cls(backend, pooled.sandbox_id, pooled.session)
        running.restored = pooled.restored
        await backend.claimed(pooled.sandbox_id, Owner.current(kernel_id=link.kernel_id))
        return running

    # -- starting its kernel -------------------------------------------------------------------
    async def start_kernel(
        self, link: KernelLink, start: dict[str, Any], home: str, preflight: Preflight
    ) -> dict[str, Any]:
        """Connect the sandbox to the kernel's exchange (exposed ports, exports), copy the
        configured files in, start the kernel and check who it runs as. Returns the
        agent's ``started`` report and how many bytes were copied in."""
        return await self.relay.run(self._start_kernel(link, start, home, preflight))

    async def _start_kernel(
        self, link: KernelLink, start: dict[str, Any], home: str, preflight: Preflight
    ) -> dict[str, Any]:
        session, exchange = self.session, link.exchange
        exchange.attach(session)
        copied = await send_copy_in(session, link.copy_items, home) if link.copy_items else 0
        exposed = {str(inside): host for inside, host in exchange.exposed().items()}
        facts = await start_kernel(session, {**start, "exposed": exposed})
        check_kernel(facts, session.hello_info, preflight)
        return {**facts, "copied": copied}

    # -- while it runs (poll is called from any thread: it reads state the relay sets) ---------
    def poll(self) -> int | None:
        if not self.session.dead.is_set():
            return None
        status = self.session.exit_status
        return status if status is not None else -signal.SIGKILL

    async def signal(self, signum: int) -> None:
        """SIGKILL ends the whole sandbox; other signals go to the kernel's process group,
        through the agent."""
        if self.session.dead.is_set():
            return
        if signum == signal.SIGKILL:
            await self.backend.kill(self.id)
            return
        self.relay.loop.call_soon_threadsafe(
            self.session.send_control, {"op": ops.SIGNAL, "signum": int(signum)}
        )

    async def kill(self) -> None:
        await self.backend.kill(self.id)

    async def remove(self, exchange: HostExchange | None) -> None:
        """Detach the exchange (a file half received is dropped), remove the sandbox, end
        the session."""
        if exchange is not None:
            self.relay.loop.call_soon_threadsafe(exchange.detach)
        try:
            await asyncio.shield(self.backend.remove(self.id))
        finally:
            self.relay.loop.call_soon_threadsafe(self.session.close)


def _own(session: AgentSession, link: KernelLink) -> None:
    """Make a session the kernel's: its console sink, its message limit, its id in logs
    (a pooled sandbox had none of them)."""
    session.console = link.console
    session.max_message = link.max_message
    session.kernel_id = link.kernel_id
