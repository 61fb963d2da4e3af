"""cgroup v1 limits (memory, CPU, pids): every place the package makes, fills, delegates,
empties or removes a cgroup folder.

* Per sandbox, as root, for the host-kernel backends (:mod:`.pipe`: bubblewrap and
  firejail): ``cgroup_gaps`` at preflight says which limits this host cannot enforce and
  why; ``Cgroup`` creates ``<controller>/sandbox-kernel/<name>`` for each controller, the
  child joins it before it execs (``join_paths`` from the spawn's pre-exec hook, so every
  descendant is charged from its first instruction), and ``remove`` kills whatever is left
  in it and removes the folders.
* Per user, the delegation the rootless runsc backend uses (:mod:`.runsc`) and the hub's
  spawner makes (:mod:`sandbox_kernel.hub`): ``<controller>/sandbox-kernel-users/<user>``
  owned by the user with totals written by root (``delegate_cgroups``); the user's server
  finds it (``delegated_cgroups``) and puts each sandbox in a child (``DelegatedCgroup``).
* ``end_all`` empties and removes folders; ``kill_members`` ends the processes of one
  folder without signalling a recycled pid (the OOM watcher's kill).

Only cgroup v1 controllers are used. cgroup v2 delegation (systemd ``Delegate=yes`` for an
unprivileged user) is not implemented: on such hosts these limits are reported as not
enforced.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import SandboxError
from ..policy import SandboxPolicy

CONTROLLERS = {"memory": "memory_limit", "cpu": "cpu_limit", "pids": "pids_limit"}
CFS_PERIOD_US = 100_000
PARENT = "sandbox-kernel"
# Under each controller, the folder an administrator (or the hub) delegates to a user:
# <mount>/sandbox-kernel-users/<user name>, owned by the user (the folder, its cgroup.procs
# and tasks; its limit files stay root's, so the user cannot raise them).
DELEGATED_PARENT = "sandbox-kernel-users"


def v1_mounts(mounts_file: str = "/proc/self/mounts") -> dict[str, Path]:
    """controller -> mount point of each cgroup v1 hierarchy we use."""
    found: dict[str, Path] = {}
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] != "cgroup":
            continue
        opts = set(fields[3].split(","))
        for controller in CONTROLLERS:
            if controller in opts and controller not in found:
                found[controller] = Path(fields[1])
    return found


def cgroup_gaps() -> dict[str, str]:
    """Policy properties (memory_limit, cpu_limit, pids_limit) this host cannot enforce."""
    mounts = v1_mounts()
    gaps: dict[str, str] = {}
    for controller, prop in CONTROLLERS.items():
        where = mounts.get(controller)
        if where is None:
            gaps[prop] = (
                f"no cgroup v1 {controller} controller is mounted (cgroup v2 delegation is not "
                "implemented)"
            )
        elif not os.access(where, os.W_OK):
            gaps[prop] = f"{where} is not writable: run the Jupyter server as root"
    return gaps


# -- limits (pure) ------------------------------------------------------------------------------
def cfs_quota_us(cpus: float) -> int:
    """The CFS quota per CFS_PERIOD_US for ``cpus`` CPUs (the kernel's minimum is 1 ms)."""
    return max(1000, int(cpus * CFS_PERIOD_US))


def limit_files(
    memory_bytes: int | None, cpus: float | None, pids: int | None
) -> dict[str, dict[str, str]]:
    """controller -> {file: value} of these limits (None: that one is not written). Swap is
    not extra: memory + swap is held to the memory limit."""
    files: dict[str, dict[str, str]] = {}
    if memory_bytes is not None:
        files["memory"] = {
            "memory.limit_in_bytes": str(memory_bytes),
            "memory.memsw.limit_in_bytes": str(memory_bytes),
        }
    if cpus is not None:
        files["cpu"] = {
            "cpu.cfs_period_us": str(CFS_PERIOD_US),
            "cpu.cfs_quota_us": str(cfs_quota_us(cpus)),
        }
    if pids is not None:
        files["pids"] = {"pids.max": str(pids)}
    return files


def write_limits(folder: Path, values: Mapping[str, str]) -> None:
    """Write limit files; memory.memsw (memory + swap) only where swap accounting exists,
    and in whichever order the kernel accepts (it must never be below the memory limit)."""
    items = [(folder / name, value) for name, value in values.items() if (folder / name).exists()]
    try:
        for path, value in items:
            path.write_text(value)
    except OSError:
        for path, value in reversed(items):
            path.write_text(value)


# -- joining, emptying, removing ----------------------------------------------------------------
def join_in_child(paths: Iterable[str]) -> None:
    """Move this process into each cgroup (``cgroup.procs`` paths; for a child between fork
    and exec, not yet multi-threaded)."""
    for path in paths:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def members(folder: Path) -> set[int]:
    """The processes in one cgroup folder (none if it is gone)."""
    try:
        return {int(x) for x in (folder / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def kill_members(folder: Path) -> set[int]:
    """SIGKILL every process in one cgroup folder, never a recycled pid: each listed pid is
    pinned with a pidfd, the folder is listed again, and only pinned processes still listed
    are signalled. A pid whose process ended and was reused elsewhere meanwhile is no longer
    listed; a pinned process that ends after the second listing takes the signal with it
    (the pidfd names that process, not its pid). Returns the pids signalled."""
    pinned: dict[int, int] = {}
    try:
        for pid in members(folder):
            try:
                pinned[pid] = os.pidfd_open(pid)
            except OSError:
                pass  # already gone
        still = members(folder)
        killed: set[int] = set()
        for pid, fd in pinned.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    killed.add(pid)
                except OSError:
                    pass  # ended meanwhile
        return killed
    finally:
        for fd in pinned.values():
            os.close(fd)


def end_all(folders: Iterable[Path], timeout: float = 10.0) -> list[int]:
    """Kill every process in the folders and the folders below them (``kill_members``,
    again until none is left: a process may fork meanwhile), then remove them, deepest
    first. Blocking; root (or the folders' owner). Returns the pids that had to be killed."""
    tree = sorted(
        (p for d in folders if d.is_dir() for p in (d, *d.rglob("*")) if p.is_dir()),
        key=lambda p: len(p.parts),
        reverse=True,
    )
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(members(folder) for folder in tree):
            break
        for folder in tree:
            killed |= kill_members(folder)
        time.sleep(0.02)
    for folder in tree:
        while True:
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # still busy: left for gc (a cgroup with tasks cannot be removed)
                time.sleep(0.02)  # tasks still exiting
    return sorted(killed)


class Cgroup:
    """One sandbox's cgroup directories (blocking file I/O: call from a worker thread)."""

    def __init__(self, name: str, mounts: dict[str, Path] | None = None) -> None:
        self.name = name
        mounts = v1_mounts() if mounts is None else mounts
        self.dirs = {c: mounts[c] / PARENT / name for c in CONTROLLERS if c in mounts}

    def create(self, policy: SandboxPolicy, *, pids: int) -> None:
        limits = limit_files(policy.memory_bytes, policy.cpus, pids)
        try:
            for controller, d in self.dirs.items():
                d.mkdir(parents=True, exist_ok=False)
                write_limits(d, limits[controller])
            if "memory" in self.dirs:
                (self.dirs["memory"] / "memory.swappiness").write_text("0")
        except BaseException:
            self.remove()
            raise

    def join_paths(self) -> list[str]:
        """The ``cgroup.procs`` files the child writes "0" into (moves itself) before it
        execs the sandbox tool (``launcher.py``)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        return {pid for d in self.dirs.values() for pid in members(d)}

    def remove(self, timeout: float = 5.0) -> None:
        """Kill every process left in the cgroup, then remove its directories."""
        end_all(self.dirs.values(), timeout)

    @staticmethod
    def remove_dir(d: Path, timeout: float = 5.0) -> None:
        """Kill every process in one cgroup directory, then remove it."""
        end_all([d], timeout)


def remove_empty(mounts: dict[str, Path] | None = None) -> list[str]:
    """Remove the empty per-sandbox cgroups left when a Jupyter process died (its sandboxes
    end with it, their folders stay). A cgroup with processes cannot be removed (EBUSY), so
    running sandboxes are safe. For ``sandbox-kernel gc``."""
    removed: set[str] = set()
    for mount in (v1_mounts() if mounts is None else mounts).values():
        parent = mount / PARENT
        if not parent.is_dir():
            continue
        for d in parent.iterdir():
            if d.is_dir():
                try:
                    d.rmdir()
                    removed.add(d.name)
                except OSError:
                    pass
    return sorted(removed)


# -- per-user delegation ------------------------------------------------------------------------
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def folder_name(user: str) -> str:
    """``user``, checked to be usable as one folder name (pure)."""
    if not user or "/" in user or "\0" in user or user in (".", ".."):
        raise SandboxError(f"not a usable user name for a folder: {user!r}")
    return user


def delegated_dirs(user: str, mounts: Mapping[str, Path]) -> dict[str, Path]:
    """controller -> ``<mount>/sandbox-kernel-users/<user>`` for each mounted controller
    (pure); a name that is not a single folder name is refused."""
    return {c: mounts[c] / DELEGATED_PARENT / folder_name(user) for c in CONTROLLERS if c in mounts}


def delegated_cgroups(
    uid: int | None = None, mounts: dict[str, Path] | None = None
) -> dict[str, Path]:
    """controller -> the cgroup v1 folder delegated to user ``uid`` (memory, cpu, pids): a
    folder owned by the user whose ``cgroup.procs`` the user may write. Its limits (set by
    root) cover every sandbox of the user; each sandbox gets a child with the policy's own
    caps. For the rootless runsc backend."""
    uid = os.geteuid() if uid is None else uid
    found: dict[str, Path] = {}
    for controller, mount in (v1_mounts() if mounts is None else mounts).items():
        d = mount / DELEGATED_PARENT / user_name(uid)
        try:
            owner = d.stat().st_uid
        except OSError:
            continue
        if owner == uid and os.access(d, os.W_OK) and os.access(d / "cgroup.procs", os.W_OK):
            found[controller] = d
    return found


def delegate_cgroups(
    user: str,
    *,
    memory_bytes: int | None = None,
    cpus: float | None = None,
    pids: int | None = None,
    mounts: Mapping[str, Path] | None = None,
) -> dict[str, Path]:
    """As root: create (or refresh) the folders :func:`delegated_cgroups` looks for, owned by
    ``user`` (the folder, ``cgroup.procs``, ``tasks``: enough to create children and join
    them), with the user's totals written by root, which the user cannot change (None: not
    written). Returns them. For the hub's spawner, administrators and the tests;
    docs/backends.md has the shell form."""
    entry = pwd.getpwnam(user)
    dirs = delegated_dirs(user, v1_mounts() if mounts is None else mounts)
    limits = limit_files(memory_bytes, cpus, pids)
    for controller, d in dirs.items():
        d.parent.mkdir(mode=0o755, exist_ok=True)
        d.mkdir(mode=0o755, exist_ok=True)
        write_limits(d, limits.get(controller, {}))
        for path in (d, d / "cgroup.procs", d / "tasks"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return dirs


def remove_delegation(user: str, mounts: dict[str, Path] | None = None) -> None:
    """As root: remove ``user``'s delegated folders; folders still holding a sandbox stay
    (EBUSY). The shared parent stays too (other users' delegations live there)."""
    for mount in (v1_mounts() if mounts is None else mounts).values():
        try:
            (mount / DELEGATED_PARENT / user).rmdir()
        except OSError:
            pass


class DelegatedCgroup(Cgroup):
    """A sandbox's cgroup folders under the user's delegated folders (rootless)."""

    def __init__(self, name: str, parents: Mapping[str, Path]) -> None:
        self.name = name
        self.dirs = {c: parents[c] / name for c in CONTROLLERS if c in parents}


def delegation_hint(user: str) -> str:
    dirs = ",".join(CONTROLLERS)
    return (
        f"as root: `for c in {{{dirs}}}; do d=/sys/fs/cgroup/$c/{DELEGATED_PARENT}/{user}; "
        f"mkdir -p $d && chown {user} $d $d/cgroup.procs $d/tasks; done`, then set the user's "
        "total limits in those folders (docs/backends.md, runsc backend)"
    )
