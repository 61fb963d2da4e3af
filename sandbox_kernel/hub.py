"""JupyterHub side of per-user limits: a spawner that puts each user's server, and so
everything it starts (kernels' sandboxes, terminals), in cgroups delegated to that user.

``c.JupyterHub.spawner_class = "sandbox_kernel.hub.UserCgroupSpawner"`` (see
docs/jupyterhub.md, recipe (a)). It is JupyterHub's ``LocalProcessSpawner`` (the hub runs
as root; each server as its user) plus, for each user, the administrator's side of the
cgroup delegation the runsc backend uses (docs/backends.md, :mod:`.backends.cgroups`):
``<controller>/sandbox-kernel-users/<user>`` for memory, cpu and pids (cgroup v1), created
before the server starts with the user's total limits (``user_memory_limit``,
``user_cpu_limit``, ``user_pids_limit``), the folder and its ``cgroup.procs``/``tasks``
owned by the user, the limit files root's. The server joins it before it drops to the
user's uid; every process it starts inherits it, and the runsc backend puts each sandbox
in a child folder with that kernel's own caps. The user cannot move a process out (that
needs write access to another cgroup) nor raise the limits. When the server stops, every
process left in the folders (a sandbox started by hand in a terminal, say) is killed and
the folders are removed.

One server per user (the cgroups are the user's; named servers are refused). Only cgroup
v1 hierarchies are handled; elsewhere the spawn is refused with what to use instead (fail
closed). Importing this module needs jupyterhub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Float, Int, Unicode, Union

from .backends.cgroups import (
    CONTROLLERS,
    delegate_cgroups,
    delegated_dirs,
    end_all,
    join_in_child,
    v1_mounts,
)
from .errors import SandboxError
from .policy import MIN_MEMORY, parse_size


def user_cgroup_dirs(user: str, mounts: Mapping[str, Path]) -> dict[str, Path]:
    """controller -> the folder delegated to ``user`` (pure). Every controller must be
    mounted (cgroup v1): a missing one refuses, naming it."""
    missing = [c for c in CONTROLLERS if c not in mounts]
    if missing:
        raise SandboxError(
            f"no cgroup v1 {', '.join(missing)} controller on this host: UserCgroupSpawner "
            "cannot bound the user's processes (on a cgroup v2 host, use a spawner that "
            "gives each server a systemd unit with limits, e.g. SystemdSpawner's mem_limit)"
        )
    return delegated_dirs(user, mounts)


class UserCgroupSpawner(LocalProcessSpawner):  # type: ignore[misc]
    """LocalProcessSpawner whose servers run in cgroups delegated to their users."""

    user_memory_limit = Union(
        [Unicode(), Int()],
        default_value="4g",
        help="Memory (no swap) of everything a user's server runs: the server, its kernels' "
        "sandboxes, terminals.",
    ).tag(config=True)
    user_cpu_limit = Float(2.0, help="CPUs for everything a user's server runs.").tag(config=True)
    user_pids_limit = Int(
        2048, help="Processes and threads of everything a user's server runs."
    ).tag(config=True)

    _dirs: dict[str, Path] | None = None

    def _limits(self) -> tuple[int, float, int]:
        memory = parse_size(self.user_memory_limit, "user_memory_limit")
        if memory < MIN_MEMORY:
            raise SandboxError(f"user_memory_limit: {self.user_memory_limit!r} is below 128m")
        if not 0.01 <= self.user_cpu_limit <= 256:
            raise SandboxError(f"user_cpu_limit: {self.user_cpu_limit!r} must be 0.01 to 256")
        if self.user_pids_limit < 64:
            raise SandboxError(f"user_pids_limit: {self.user_pids_limit!r} is below 64")
        return memory, float(self.user_cpu_limit), int(self.user_pids_limit)

    async def start(self) -> Any:
        if self.name:
            # Its cgroups are the user's: stopping one named server would end the other's.
            raise SandboxError(
                f"UserCgroupSpawner runs one server per user; {self.user.name!r} asked for a "
                f"named server {self.name!r}: set c.JupyterHub.allow_named_servers = False"
            )
        memory, cpus, pids = self._limits()
        self._dirs = await asyncio.to_thread(self._delegate, memory, cpus, pids)
        return await super().start()

    def _delegate(self, memory: int, cpus: float, pids: int) -> dict[str, Path]:
        mounts = v1_mounts()
        user_cgroup_dirs(self.user.name, mounts)  # refuses without cgroup v1
        return delegate_cgroups(
            self.user.name, memory_bytes=memory, cpus=cpus, pids=pids, mounts=mounts
        )

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        drop_privileges = super().make_preexec_fn(name)
        assert self._dirs is not None, "start() delegates the cgroups first"
        paths = [str(d / "cgroup.procs") for d in self._dirs.values()]

        def preexec() -> None:  # in the child, as root, before it becomes the user
            join_in_child(paths)
            drop_privileges()

        return preexec

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        try:
            dirs = self._dirs or user_cgroup_dirs(
                self.user.name, await asyncio.to_thread(v1_mounts)
            )
        except SandboxError:
            return  # no cgroup v1 here: start() refused, nothing was delegated
        killed = await asyncio.to_thread(end_all, dirs.values())
        if killed:
            self.log.warning(
                "%s's server stopped: ended %d process(es) left in its cgroups",
                self.user.name,
                len(killed),
            )
        self._dirs = None
