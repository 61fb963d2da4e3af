"""Per-sandbox cgroup (v1) limits for the host-kernel backends: memory, CPU, pids.

Called by :mod:`.pipe` (the bubblewrap and firejail backends): ``cgroup_gaps``
at preflight says which limits this host cannot enforce and why; ``Cgroup``
creates ``<controller>/sandbox-kernel/<name>`` for each controller, the child
joins it before it execs (``join_paths`` from the spawn's pre-exec hook, so
every descendant is charged from its first instruction), and ``remove`` kills
whatever is left in it and removes the directories.

Only cgroup v1 controllers writable by the caller (root) are used. cgroup v2
delegation (systemd ``Delegate=yes`` for an unprivileged user) is not
implemented: on such hosts these limits are reported as not enforced.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..policy import SandboxPolicy

CONTROLLERS = {"memory": "memory_limit", "cpu": "cpu_limit", "pids": "pids_limit"}
CFS_PERIOD_US = 100_000
PARENT = "sandbox-kernel"


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


class Cgroup:
    """One sandbox's cgroup directories (blocking file I/O: call from a worker thread)."""

    def __init__(self, name: str, mounts: dict[str, Path] | None = None) -> None:
        self.name = name
        mounts = v1_mounts() if mounts is None else mounts
        self.dirs = {c: mounts[c] / PARENT / name for c in CONTROLLERS if c in mounts}

    def create(self, policy: SandboxPolicy, *, pids: int) -> None:
        try:
            for d in self.dirs.values():
                d.mkdir(parents=True, exist_ok=False)
            if "memory" in self.dirs:
                mem = self.dirs["memory"]
                _write(mem / "memory.limit_in_bytes", policy.memory_bytes)
                if (mem / "memory.memsw.limit_in_bytes").exists():
                    _write(mem / "memory.memsw.limit_in_bytes", policy.memory_bytes)  # no swap
                _write(mem / "memory.swappiness", 0)
            if "cpu" in self.dirs:
                cpu = self.dirs["cpu"]
                _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
                _write(cpu / "cpu.cfs_quota_us", max(1000, int(policy.cpus * CFS_PERIOD_US)))
            if "pids" in self.dirs:
                _write(self.dirs["pids"] / "pids.max", pids)
        except BaseException:
            self.remove()
            raise

    def join_paths(self) -> list[str]:
        """The ``cgroup.procs`` files the child writes "0" into (moves itself) before it
        execs the sandbox tool (``launcher.py``)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def remove(self, timeout: float = 5.0) -> None:
        """Kill every process left in the cgroup, then remove its directories."""
        deadline = time.monotonic() + timeout
        for d in self.dirs.values():
            Cgroup.remove_dir(d, max(0.0, deadline - time.monotonic()))

    @staticmethod
    def remove_dir(d: Path, timeout: float = 5.0) -> None:
        """Kill every process in one cgroup directory, then remove it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                pids = []
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # tasks still exiting


def join_in_child(paths: list[str]) -> None:
    """Move this process into each cgroup (for a child that is not yet multi-threaded)."""
    for path in paths:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _write(path: Path, value: int) -> None:
    path.write_text(f"{value}\n")


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
