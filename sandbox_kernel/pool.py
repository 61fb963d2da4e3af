"""Warm pool: sandboxes started ahead of time, each already running its agent and a
kernel initialised up to its key (see inside/prewarm_kernel.py), waiting to be claimed.

The provisioner's ``launch_kernel`` claims one (``claim``); the pool then refills
in the background. A sandbox is handed out once and never reused: restarts and
other kernels claim fresh ones. Pool sandboxes are created by the same backend
from the same policy as cold ones, so they are isolated exactly alike; they only
differ in being labelled as pooled instead of with a kernel id.

Snapshots: where the backend offers them (``SandboxBackend.snapshots``; the runsc
backend as root), the pool's first sandbox is pre-initialised as above, then checkpointed
into a snapshot, and every refill restores a new sandbox from it (``boot.restore``): a
sandbox of its own, with its own name, cgroup and pipes, whose kernel renews at its claim
what copies of one snapshot share (inside/prewarm_kernel.py). A claim that finds the pool
empty restores one on the spot, so a burst of launches is served by restores too. Which
snapshot a restore reads, its renewal and deletion, and when snapshots are given up, are
``pool_snapshots.py``'s. A restore that fails falls back to a fresh sandbox (logged).
Never anything weaker: a restored sandbox and a fresh one are made from the same policy
by the same backend.

One pool per (backend, policy, runtime, kernel command, kernelspec env) per process; all
pool work runs on the relay loop. ``drain_all`` removes every unclaimed sandbox and every
snapshot (registered with ``atexit``; if the process dies instead, each agent sees its
stdin close and ends its sandbox, and ``sandbox-kernel gc`` removes what is left).
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
from .boot import boot, check_kernel, restore
from .policy import INSIDE_CONNECTION_FILE, SandboxPolicy
from .pool_snapshots import CheckpointFailed, SnapshotCycle
from .prewarm import placeholder_connection
from .relay.session import AgentSession
from .relay.thread import RelayThread

__all__ = ["PooledSandbox", "WarmPool"]


@dataclass
class PooledSandbox:
    sandbox_id: str
    name: str
    session: AgentSession
    restored: bool = False  # restored from the pool's snapshot (else started afresh)


# A fill that fails (a busy daemon, a sandbox killed while booting) is retried after 1, 2
# and 4 s; after that the pool waits for the next launch. Only a policy that has started a
# kernel is pooled at all (``refill``), so a retry is never a policy that cannot start.
FILL_RETRIES = 3


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
        self._tasks: set[asyncio.Task[Any]] = set()  # keep references until done
        self.snapshots = SnapshotCycle(backend, log, self._checkpoint_fresh, self._track)
        self.restores = 0  # sandboxes this pool restored (stats, tests)
        self.failed_fills = 0  # in a row; a fill that succeeds resets it

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
        """A ready sandbox; else, where the pool has snapshots, one restored now; else None
        (the caller starts cold). The caller calls ``refill`` once its launch succeeded, so
        a policy that cannot start kernels fills nothing."""
        claimed = None
        while self.ready:
            candidate = self.ready.popleft()
            if not candidate.session.dead.is_set():
                claimed = candidate
                break
            self._spawn(self._remove(candidate))
        if claimed is None and self.snapshots.may_restore() and self.snapshots.known():
            claimed = await self._restore_one()
        return claimed

    def refill(self) -> None:
        while not self.closed and len(self.ready) + self.filling < self.size:
            self.filling += 1
            self._spawn(self._fill_one())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._track(asyncio.get_running_loop().create_task(coro))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_one(self) -> None:
        try:
            sandbox = await self._restore_one() if self.snapshots.may_restore() else None
            if sandbox is None:
                sandbox = await self._fresh()
            if self.closed:
                await self._remove(sandbox)
            else:
                self.ready.append(sandbox)
            self.failed_fills = 0
        except Exception as exc:
            self.failed_fills += 1
            retry = self.failed_fills <= FILL_RETRIES
            self.log.warning(
                "warm pool: could not start a sandbox: %r%s",
                exc,
                f" (retrying in {2 ** (self.failed_fills - 1)} s)" if retry else "",
            )
        else:
            retry = False
        finally:
            self.filling -= 1
        if retry:
            await asyncio.sleep(2 ** (self.failed_fills - 1))  # drain cancels it
            self.refill()

    async def _fresh(self) -> PooledSandbox:
        """A new sandbox whose agent has pre-initialised a kernel (removed on failure)."""
        name = f"sandbox-kernel-pool-{secrets.token_hex(6)}"
        owner = Owner.current(pooled=True)
        session = AgentSession(name, console=_discard_console, log=self.log)
        sandbox_id = await asyncio.wait_for(
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
            await asyncio.shield(self.backend.remove(sandbox_id))
            raise
        return PooledSandbox(sandbox_id, name, session)

    # -- snapshots (which one, when: pool_snapshots.py) -------------------------------------
    async def _restore_one(self) -> PooledSandbox | None:
        """A sandbox restored from the current snapshot (made first if there is none, or if
        it is due for renewal); None, logged, if that fails: the caller starts a fresh one."""
        snap = await self.snapshots.take()
        if snap is None:
            return None
        name = f"sandbox-kernel-pool-{secrets.token_hex(6)}"
        session = AgentSession(name, console=_discard_console, log=self.log)
        try:
            sandbox_id = await asyncio.wait_for(
                restore(
                    self.backend, snap.id, self.policy, self.preflight, session,
                    name=name, owner=Owner.current(pooled=True),
                ),
                timeout=self.policy.launch_timeout,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.snapshots.restore_failed(snap, exc)
            return None
        finally:
            self.snapshots.done_reading(snap)
        self.snapshots.restored()
        self.restores += 1
        return PooledSandbox(sandbox_id, name, session, restored=True)

    async def _checkpoint_fresh(self) -> str:
        """Pre-initialise a fresh sandbox, checkpoint it into a snapshot, remove it; the
        snapshot's id."""
        source = await self._fresh()
        checkpoint: asyncio.Future[str] | None = None
        try:
            # Everything sent to the agent is consumed: no frame is cut by the snapshot.
            await asyncio.wait_for(source.session.resume(), self.policy.launch_timeout)
            owner = Owner.current(pooled=True)
            checkpoint = asyncio.ensure_future(self.backend.checkpoint(source.sandbox_id, owner))
            return await asyncio.wait_for(asyncio.shield(checkpoint), self.policy.launch_timeout)
        except asyncio.CancelledError:
            if checkpoint is not None:  # it runs on in its thread: delete what it makes
                checkpoint.add_done_callback(self.snapshots.delete_late)
            raise
        except Exception as exc:
            if checkpoint is not None:
                checkpoint.add_done_callback(self.snapshots.delete_late)
            raise CheckpointFailed(repr(exc)) from exc
        finally:
            await asyncio.shield(self._remove(source))

    async def _remove(self, sandbox: PooledSandbox) -> None:
        sandbox.session.close()
        try:
            await self.backend.remove(sandbox.sandbox_id)
        except Exception as exc:
            self.log.warning("warm pool: could not remove %s: %s", sandbox.name, exc)

    async def drain(self) -> None:
        """Remove every unclaimed sandbox, including those still starting, and every
        snapshot."""
        self.closed = self.snapshots.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # a sandbox still starting removes itself on cancellation
        await asyncio.gather(*tasks, return_exceptions=True)
        sandboxes, self.ready = list(self.ready), deque()
        await asyncio.gather(*(self._remove(s) for s in sandboxes), *self.snapshots.drain())

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
            "snapshots": sum(p.snapshots.current is not None for p in pools),
            "restores": sum(p.restores for p in pools),
        }


atexit.register(WarmPool.drain_all)
