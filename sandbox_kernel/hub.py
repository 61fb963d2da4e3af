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
needs write access to another cgroup) nor raise the limits.

Each server also gets a runtime folder of its own, ``/run/sandbox-kernel-users/<user>``
(``XDG_RUNTIME_DIR``: the user's, 0700, under a root-owned parent), so no backend keeps
its state in a predictable folder of the shared ``/tmp`` that another user could take first.

Whenever a server ends, stopped by the hub or dead on its own (``poll`` finding it gone:
JupyterHub then never calls ``stop``), every process left in the user's cgroups (a sandbox
or a ``setsid`` process started in a terminal, say) is killed, the cgroup folders and the
runtime folder are removed, and so is everything the user left in memory-backed shared
folders (``/dev/shm``, a tmpfs ``/tmp``) and their System V shared memory segments, whose
pages would otherwise outlive the cgroups that bound them.

One server per user (the cgroups are the user's; named servers are refused). Only cgroup
v1 hierarchies are handled; elsewhere the spawn is refused with what to use instead (fail
closed). Importing this module needs jupyterhub.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Float, Int, Unicode, Union

from .backends.cgroups import (
    CONTROLLERS,
    delegate_cgroups,
    delegated_dirs,
    end_all,
    folder_name,
    join_in_child,
    v1_mounts,
)
from .backends.state import HUB_RUNTIME_PARENT
from .errors import SandboxError
from .policy import MIN_MEMORY, parse_size

# Root's, 0755: each user's runtime folder is made in it by the hub, nowhere a user can write.
RUNTIME_PARENT = HUB_RUNTIME_PARENT
IPC_RMID = 0  # shmctl's command (<sys/ipc.h>)


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


def make_runtime_dir(user: str, parent: Path = RUNTIME_PARENT) -> Path:
    """A fresh, empty ``parent/<user>`` owned by the user, 0700, under a root-owned
    ``parent`` nobody else may write (blocking; root). What an earlier server left is
    removed first: the user's server is not running."""
    entry = pwd.getpwnam(user)
    folder = parent / folder_name(user)
    parent.mkdir(mode=0o755, exist_ok=True)
    st = parent.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise SandboxError(f"{parent} must be a folder of root's: remove it and start again")
    parent.chmod(0o755)  # whatever root's umask made it
    remove_runtime_dir(user, parent)
    folder.mkdir(mode=0o700)
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    folder.chmod(0o700)
    return folder


def remove_runtime_dir(user: str, parent: Path = RUNTIME_PARENT) -> None:
    """Remove ``parent/<user>`` and everything in it (blocking; root; rmtree follows no
    link the user may have planted)."""
    folder = parent / folder_name(user)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    shutil.rmtree(folder, ignore_errors=True)


def shared_memory_dirs(mounts_file: str = "/proc/self/mounts") -> list[Path]:
    """The tmpfs mounts anyone may write into (``/dev/shm``, a tmpfs ``/tmp``...): what a
    user leaves there holds memory after their cgroups are gone."""
    found: list[Path] = []
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[2] != "tmpfs":
            continue
        where = Path(fields[1].replace("\\040", " "))
        try:
            world_writable = where.stat().st_mode & 0o002
        except OSError:
            continue
        if world_writable and where not in found:
            found.append(where)
    return found


def remove_files_of(uid: int, folders: Iterable[Path]) -> list[str]:
    """Remove every file and folder owned by ``uid`` in these folders and below them, in
    other users' folders too, without following links or crossing into another mount
    (blocking; root). Returns what was removed."""
    removed: list[str] = []
    for top in folders:
        try:
            device = top.lstat().st_dev
        except OSError:
            continue
        for where, folders_here, files in os.walk(top):
            for name in [*folders_here, *files]:
                path = Path(where) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                mine = st.st_dev == device and st.st_uid == uid
                if name in folders_here and (mine or st.st_dev != device):
                    folders_here.remove(name)  # removed whole, or another mount: not walked
                if not mine:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path))
    return removed


def segments_of(uid: int, table: str) -> list[int]:
    """The ids of the System V shared memory segments ``uid`` owns or created, from the
    text of /proc/sysvipc/shm (pure)."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()  # key shmid perms size cpid lpid nattch uid gid cuid ...
        if len(fields) > 9 and uid in (int(fields[7]), int(fields[9])):
            found.append(int(fields[1]))
    return found


def remove_segments_of(uid: int) -> list[int]:
    """Mark ``uid``'s System V shared memory segments for removal (they outlive their
    processes unless kernel.shm_rmid_forced=1); each is freed once nothing has it attached
    (blocking; root). Returns their ids."""
    try:
        table = Path("/proc/sysvipc/shm").read_text()
    except OSError:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    return [shmid for shmid in segments_of(uid, table) if libc.shmctl(shmid, IPC_RMID, None) == 0]


def end_session(user: str, dirs: Mapping[str, Path]) -> tuple[list[int], list[str]]:
    """After a user's server ended: kill every process left in its cgroups and remove them,
    then remove its runtime folder and what the user left in shared memory (files in
    memory-backed folders anyone may write, System V segments) (blocking; root). Returns
    (pids killed, what was removed)."""
    killed = end_all(dirs.values())
    remove_runtime_dir(user)
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return killed, []  # the account is gone, and with it whose files they were
    segments = [f"System V segment {shmid}" for shmid in remove_segments_of(uid)]
    return killed, remove_files_of(uid, shared_memory_dirs()) + segments


class UserCgroupSpawner(LocalProcessSpawner):  # type: ignore[misc]
    """LocalProcessSpawner whose servers run in cgroups delegated to their users, with a
    runtime folder of their own, cleaned up whenever they end."""

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
    _ending: asyncio.Lock | None = None
    _stopping = False

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
        try:
            await asyncio.to_thread(make_runtime_dir, self.user.name)
            return await super().start()
        except BaseException:
            # JupyterHub stops only a server poll() finds running: this one never ran.
            await self._end_session("failed to start")
            raise

    def _delegate(self, memory: int, cpus: float, pids: int) -> dict[str, Path]:
        mounts = v1_mounts()
        user_cgroup_dirs(self.user.name, mounts)  # refuses without cgroup v1
        return delegate_cgroups(
            self.user.name, memory_bytes=memory, cpus=cpus, pids=pids, mounts=mounts
        )

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        env["XDG_RUNTIME_DIR"] = str(RUNTIME_PARENT / folder_name(self.user.name))
        return env

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        drop_privileges = super().make_preexec_fn(name)
        assert self._dirs is not None, "start() delegates the cgroups first"
        paths = [str(d / "cgroup.procs") for d in self._dirs.values()]

        def preexec() -> None:  # in the child, as root, before it becomes the user
            join_in_child(paths)
            drop_privileges()

        return preexec

    async def poll(self) -> int | None:
        """None while the server runs; else its exit status, once everything it left has
        been ended (JupyterHub calls ``stop`` only for a server ``poll`` finds running)."""
        was_running = bool(self.pid)  # LocalProcessSpawner clears it once the server is gone
        status: int | None = await super().poll()
        if status is not None and was_running and not self._stopping:
            await self._end_session("ended on its own")
        return status

    async def stop(self, now: bool = False) -> None:
        self._stopping = True  # LocalProcessSpawner.stop polls: the end is stop's own
        try:
            await super().stop(now=now)
        finally:
            self._stopping = False
        await self._end_session("stopped")

    async def _end_session(self, how: str) -> None:
        """Kill what the server left in the user's cgroups, remove them, its runtime folder
        and the user's files in shared memory (once at a time)."""
        self._ending = self._ending or asyncio.Lock()
        async with self._ending:
            try:
                dirs = self._dirs or user_cgroup_dirs(
                    self.user.name, await asyncio.to_thread(v1_mounts)
                )
            except SandboxError:
                dirs = {}  # no cgroup v1 here: start() refused, nothing was delegated
            killed, removed = await asyncio.to_thread(end_session, self.user.name, dirs)
            if killed or removed:
                self.log.warning(
                    "%s's server %s: ended %d process(es) left in its cgroups, removed %d "
                    "file(s) or segment(s) of the user's in shared memory",
                    self.user.name, how, len(killed), len(removed),
                )  # fmt: skip
            self._dirs = None
