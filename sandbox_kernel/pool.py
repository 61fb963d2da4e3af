"""Warm pool: sandboxes started ahead of time, each already running its agent and a
kernel initialised up to its key (see inside/prewarm_kernel.py), waiting to be claimed.

The provisioner's ``launch_kernel`` claims one (``claim``); the pool then refills
in the background. A sandbox is handed out once and never reused: restarts and
other kernels claim fresh ones. Pool sandboxes are created by the same backend
from the same policy as cold ones, so they are isolated exactly alike; they only
differ in being labelled as pooled instead of with a kernel id.

One pool per (backend, policy, runtime, kernel command, kernelspec env) per process; all
pool work runs on the relay loop. ``drain_all`` removes every unclaimed sandbox
(registered with ``atexit``; if the process dies instead, each agent sees its stdin
close and ends its sandbox).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .backends.base import Preflight, SandboxBackend
from .backends.owner import Owner
from .boot import boot, check_kernel
from .policy import INSIDE_CONNECTION_FILE, SandboxPolicy
from .prewarm import placeholder_connection
from .relay.session import AgentSession
from .relay.thread import RelayThread

__all__ = ["PooledSandbox", "WarmPool"]


@dataclass
class PooledSandbox:
    container_id: str
    name: str
    session: AgentSession


def _discard_console(_data: bytes) -> None:
    pass


class WarmPool:
    _pools: ClassVar[dict[str, WarmPool]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        backend: SandboxBackend,
        policy: SandboxPolicy,
        preflight: Preflight,
        prewarm_cmd: list[str],
        env: dict[str, str],
        size: int,
        log: logging.Logger,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.preflight = preflight
        self.prewarm_cmd = prewarm_cmd
        self.env = env
        self.size = size
        self.log = log
        self.ready: deque[PooledSandbox] = deque()
        self.filling = 0
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # keep references until done

    @classmethod
    def get(
        cls,
        backend: SandboxBackend,
        policy: SandboxPolicy,
        preflight: Preflight,
        prewarm_cmd: list[str],
        env: dict[str, str],
        size: int,
        log: logging.Logger,
    ) -> WarmPool:
        # The backend too: Docker and the runsc backend both report runtime "runsc".
        key = json.dumps(
            [backend.describe(), asdict(policy), preflight.runtime, prewarm_cmd, env],
            sort_keys=True,
        )
        with cls._lock:
            pool = cls._pools.get(key)
            if pool is None or pool.closed:
                pool = cls._pools[key] = WarmPool(
                    backend, policy, preflight, prewarm_cmd, env, size, log
                )
            pool.size = max(pool.size, size)
            return pool

    # -- on the relay loop ---------------------------------------------------------------
    async def claim(self) -> PooledSandbox | None:
        """A ready sandbox, or None (the caller starts cold). The caller calls ``refill``
        once its launch succeeded, so a policy that cannot start kernels fills nothing."""
        claimed = None
        while self.ready:
            candidate = self.ready.popleft()
            if not candidate.session.dead.is_set():
                claimed = candidate
                break
            self._spawn(self._remove(candidate))
        return claimed

    def refill(self) -> None:
        while not self.closed and len(self.ready) + self.filling < self.size:
            self.filling += 1
            self._spawn(self._fill_one())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_one(self) -> None:
        name = f"sandbox-kernel-pool-{secrets.token_hex(6)}"
        owner = Owner.current(pooled=True)
        session = AgentSession(name, console=_discard_console, log=self.log)
        try:
            cid = await asyncio.wait_for(
                boot(self.backend, self.policy, self.preflight, session, name=name, owner=owner),
                timeout=self.policy.launch_timeout,
            )
            try:
                facts = await asyncio.wait_for(
                    session.prewarm(
                        {
                            "argv": self.prewarm_cmd,
                            "env": self.env,
                            "cwd": self.policy.home,
                            "connection_file": INSIDE_CONNECTION_FILE,
                            "connection": placeholder_connection(),
                        }
                    ),
                    timeout=self.policy.launch_timeout,
                )
                check_kernel(facts, session.hello_info, self.preflight)
            except BaseException:
                session.close()
                await asyncio.shield(self.backend.remove(cid))
                raise
            sandbox = PooledSandbox(cid, name, session)
            if self.closed:
                await self._remove(sandbox)
            else:
                self.ready.append(sandbox)
        except Exception as exc:
            self.log.warning("warm pool: could not start a sandbox: %r", exc)
        finally:
            self.filling -= 1

    async def _remove(self, sandbox: PooledSandbox) -> None:
        sandbox.session.close()
        try:
            await self.backend.remove(sandbox.container_id)
        except Exception as exc:
            self.log.warning("warm pool: could not remove %s: %s", sandbox.name, exc)

    async def drain(self) -> None:
        """Remove every unclaimed sandbox, including those still starting."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # a sandbox still starting removes itself on cancellation
        await asyncio.gather(*tasks, return_exceptions=True)
        sandboxes, self.ready = list(self.ready), deque()
        await asyncio.gather(*(self._remove(s) for s in sandboxes))

    # -- from any thread --------------------------------------------------------------------
    @classmethod
    def drain_all(cls, timeout: float = 30.0) -> None:
        """Remove every unclaimed pooled sandbox of this process (e.g. at shutdown)."""
        with cls._lock:
            pools, cls._pools = list(cls._pools.values()), {}
        if not pools:
            return

        async def drain() -> None:
            await asyncio.gather(*(p.drain() for p in pools))

        RelayThread.get().submit(drain()).result(timeout=timeout)

    @classmethod
    def stats(cls) -> dict[str, Any]:
        with cls._lock:
            pools = list(cls._pools.values())
        return {
            "pools": len(pools),
            "ready": sum(len(p.ready) for p in pools),
            "filling": sum(p.filling for p in pools),
        }


atexit.register(WarmPool.drain_all)
