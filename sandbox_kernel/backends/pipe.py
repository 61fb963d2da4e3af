"""Backends whose sandbox is a host process tree: the agent on its stdin/stdout pipes.

Who calls what: see ``base.py``, and ``spawned.py`` for what these backends share with
the runsc backend (``attach``, ``kill``, ``remove``). ``create`` spawns the sandbox process
with pipes as its stdin and stdout (the agent's stage 1 waits there for the bundle).
Subclasses give the command line (``sandbox_argv``, pure) and what their tool cannot
enforce here (``tool_gaps``).

Before the sandbox tool runs, it joins the sandbox's cgroups, gets its rlimits and, when
the server runs as root, drops to a host uid of its own (:func:`host_uid`): unique per
sandbox, so RLIMIT_NPROC, which the kernel counts per user, is a per-sandbox limit, and
no two sandboxes share an identity. That happens in a fresh interpreter the child execs
first (``launcher.py``), not in a pre-exec hook of this threaded process. Each sandbox
leaves a record (owner, pid, cgroups) in the user's state folder (``state.py``), so
``sandbox-kernel ps`` lists it and ``gc`` (and a server's first launch) cleans up after a
server that died. Every blocking step runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SandboxError
from ..image.rootfs import check_rootfs, rootfs_for
from ..policy import SandboxPolicy
from . import state
from .base import Preflight, SandboxInfo
from .bpf import seccomp_bpf, seccomp_fd
from .capabilities import refuse_unenforced
from .cgroups import CONTROLLERS, Cgroup, cgroup_gaps, v1_mounts
from .launcher import launcher_argv
from .owner import Owner, process_start
from .spawned import TOOL_ENV, Sandboxes, SpawnedBackend, output_pipe, tail

HOST_UID_BASE = 1_900_000_000
HOST_UID_SPAN = 1 << 24


def host_uid() -> int:
    """A fresh host uid (and gid) for one sandbox: no passwd entry, no files, no processes."""
    return HOST_UID_BASE + secrets.randbelow(HOST_UID_SPAN)


@dataclass
class Spawned:
    """One running sandbox process and what belongs to it."""

    proc: subprocess.Popen[bytes]
    pipes: tuple[int, int] | None  # our ends (its stdin, its stdout) until a session takes them
    stderr: int  # a memfd: the sandbox tool's stderr (no host path a sandbox process could open)
    cgroup: Cgroup | None
    ids: tuple[int, int] | None
    record: Path | None = None  # its record in the state folder (ps, gc)
    extra: dict[str, str] = field(default_factory=dict)


class PipeBackend(SpawnedBackend[Spawned]):
    package: str  # the Debian package that has the tool
    # True: a fresh host uid per sandbox (as root), so RLIMIT_NPROC is per sandbox. False:
    # a shared uid (``sandbox_uid``), so the pids cgroup carries the process limit instead.
    per_sandbox_uid = True
    _sandboxes: ClassVar[Sandboxes[Spawned]] = Sandboxes()

    # -- what subclasses provide -------------------------------------------------------
    @abstractmethod
    def sandbox_argv(
        self, policy: SandboxPolicy, rootfs: Path, command: list[str], seccomp: int
    ) -> list[str]:
        """The full command line that runs ``command`` in the sandbox (pure)."""

    def sandbox_uid(self) -> tuple[int, int] | None:
        """(uid, gid) the sandbox tool runs as; None: the server's own (not root)."""
        if os.geteuid() != 0:
            return None
        uid = host_uid()
        return uid, uid

    @abstractmethod
    def tool_gaps(self, policy: SandboxPolicy, rootfs: Path) -> dict[str, str]:
        """Properties the tool itself cannot enforce here (may run a probe; blocking)."""

    # -- preflight ------------------------------------------------------------------------
    def host_gaps(self, policy: SandboxPolicy) -> tuple[Path, dict[str, str]]:
        """(rootfs, every property this host cannot enforce for ``policy``); blocking."""
        if shutil.which(self.tool) is None:
            raise SandboxError(
                f"`{self.tool}` is not installed: apt-get install {self.package} "
                "(or `sudo sandbox-kernel setup-host`)"
            )
        rootfs = check_rootfs(rootfs_for(policy.image, self.rootfs_override))
        gaps: dict[str, str] = {}
        try:
            seccomp_bpf()
        except SandboxError as exc:
            gaps["seccomp"] = str(exc)
        gaps.update(cgroup_gaps())
        if self.per_sandbox_uid and os.geteuid() != 0:
            gaps["nproc_limit"] = (
                "RLIMIT_NPROC counts every process of the server's uid on the host; a "
                "per-sandbox host uid needs the server to run as root"
            )
        elif not self.per_sandbox_uid and "pids_limit" in gaps:
            gaps["nproc_limit"] = "the process limit is the pids cgroup: " + gaps["pids_limit"]
        gaps.update(self.tool_gaps(policy, rootfs))
        return rootfs, gaps

    def _preflight(self, policy: SandboxPolicy) -> Preflight:
        gaps = self.gaps(policy)
        warnings = refuse_unenforced(self.name, gaps, self.accept_unenforced)
        shared = (
            f"backend {self.name!r} shares the host's Linux kernel with the sandbox (no gVisor): "
            "a kernel bug reachable through the allowed syscalls is a way out"
        )
        return Preflight(runtime=self.name, warnings=(shared, *warnings))

    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        preflight = await asyncio.to_thread(self._preflight, policy)
        await self.reap_orphans_once()
        return preflight

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, policy: SandboxPolicy, command: list[str], name: str, owner: Owner) -> str:
        rootfs, gaps = self.host_gaps(policy)
        # The tool's stderr stays open in processes of the sandbox (firejail's shell): a file
        # of the host there would be readable through /proc/<pid>/fd/2. A memfd has no path.
        stderr = os.memfd_create(f"sandbox-kernel-{self.name}-stderr", os.MFD_CLOEXEC)
        cgroup: Cgroup | None = None
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = output_pipe()
        filter_fd = -1
        try:
            usable = {c: m for c, m in v1_mounts().items() if CONTROLLERS[c] not in gaps}
            if usable:
                cgroup = Cgroup(name, usable)
                cgroup.create(
                    policy, pids=policy.pids_limit if self.per_sandbox_uid else policy.nproc
                )
            ids = self.sandbox_uid()
            filter_fd = seccomp_fd() if "seccomp" not in gaps else -1
            argv = launcher_argv(
                self.sandbox_argv(policy, rootfs, command, filter_fd),
                cgroup_procs=cgroup.join_paths() if cgroup else [],
                rlimits=_rlimits(policy, per_uid=self.per_sandbox_uid and ids is not None),
                ids=ids,
            )
            proc = subprocess.Popen(
                argv,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr,
                pass_fds=[filter_fd] if filter_fd >= 0 else [],
                cwd="/",
                env=TOOL_ENV,
                start_new_session=True,
            )
        except BaseException:
            os.close(stdin_w)
            os.close(stdout_r)
            os.close(stderr)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
            if filter_fd >= 0:
                os.close(filter_fd)
        record = _write_record(self.name, name, owner, proc.pid, cgroup)
        self._sandboxes.add(name, Spawned(proc, (stdin_w, stdout_r), stderr, cgroup, ids, record))
        return name

    def _claim(self, sandbox: Spawned, owner: Owner) -> None:
        if sandbox.record is not None:
            _update_record(sandbox.record, owner)

    def _kill_one(self, sandbox_id: str, sandbox: Spawned) -> None:
        try:
            os.killpg(sandbox.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if sandbox.cgroup is not None:
            for pid in sandbox.cgroup.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    @classmethod
    def _end_one(cls, sandbox_id: str, sandbox: Spawned) -> str:
        code, err = _end(sandbox)
        return err if code not in (0, -signal.SIGKILL) else ""

    # -- the CLI: every pipe backend's sandboxes (bwrap and firejail keep their records in
    # one state folder, as docker and docker-runc share one daemon) ----------------------
    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        return list_records()

    @classmethod
    def remove_orphans(cls) -> list[str]:
        return remove_orphan_records()


atexit.register(PipeBackend.remove_all)


def _end(spawned: Spawned) -> tuple[int, str]:
    """Kill a sandbox's process group, reap it, remove its cgroups; return its exit code
    and the tail of the tool's stderr."""
    try:
        os.killpg(spawned.proc.pid, signal.SIGKILL)
    except OSError:
        pass
    code = spawned.proc.wait()
    if spawned.pipes is not None:
        for fd in spawned.pipes:
            os.close(fd)
        spawned.pipes = None
    if spawned.cgroup is not None:
        spawned.cgroup.remove()
    if spawned.record is not None:
        spawned.record.unlink(missing_ok=True)
    err = tail(spawned.stderr)
    return code, err


def _rlimits(policy: SandboxPolicy, *, per_uid: bool) -> list[tuple[int, int]]:
    limits = [(resource.RLIMIT_NOFILE, policy.nofile), (resource.RLIMIT_CORE, 0)]
    if per_uid:
        limits.append((resource.RLIMIT_NPROC, policy.nproc))
    return limits


# -- records: one JSON file per running sandbox, in the user's state folder ---------------
def _write_record(
    backend: str, name: str, owner: Owner, pid: int, cgroup: Cgroup | None
) -> Path | None:
    """Best effort: a sandbox without a record still runs; only ps and gc miss it."""
    try:
        folder = state.state_base("pipe")
        path = folder / f"{name}.json"
        record = {
            "backend": backend,
            "name": name,
            "pid": pid,
            "pid_start": process_start(pid),
            "started": time.time(),
            "labels": owner.labels(),
            "cgroups": [str(d) for d in cgroup.dirs.values()] if cgroup else [],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        return path
    except (OSError, SandboxError):
        return None


def _update_record(path: Path, owner: Owner) -> None:
    try:
        record = json.loads(path.read_text())
        record["labels"] = owner.labels()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


def _records() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for base in state.existing_bases("pipe"):
        for path in base.glob("*.json"):
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
    return found


def _memory_mib(record: dict[str, Any]) -> float:
    for d in record.get("cgroups", []):
        if "/memory/" in d:
            try:
                return int(Path(d, "memory.usage_in_bytes").read_text()) / 2**20
            except (OSError, ValueError):
                pass
    return 0.0


def list_records() -> list[SandboxInfo]:
    """This user's running pipe-backend sandboxes (for ``ps``)."""
    rows = []
    for _path, record in _records():
        owner = Owner.from_labels(record.get("labels", {}))
        if owner is None or not _running(record):
            continue
        rows.append(
            SandboxInfo(
                backend=str(record.get("backend", "")),
                name=str(record.get("name", "")),
                id=str(record.get("pid", "")),
                kernel_id=owner.kernel_id,
                pooled=owner.pooled,
                user=owner.user,
                server_pid=owner.server_pid,
                uptime_s=time.time() - float(record.get("started", time.time())),
                memory_mib=_memory_mib(record),
            )
        )
    return rows


def remove_orphan_records() -> list[str]:
    """Sandboxes (and their cgroups and records) whose Jupyter process is gone (for
    ``gc``); records of sandboxes already gone are removed too."""
    removed = []
    for path, record in _records():
        owner = Owner.from_labels(record.get("labels", {}))
        running = _running(record)
        if owner is not None and not owner.server_gone() and running:
            continue
        if running:  # its process group (the sandbox tool's session), then its cgroups
            try:
                os.killpg(int(record["pid"]), signal.SIGKILL)
            except OSError:
                pass
        for d in record.get("cgroups", []):
            Cgroup.remove_dir(Path(d))
        path.unlink(missing_ok=True)
        removed.append(str(record.get("name", path.stem)))
    return removed


def _running(record: dict[str, Any]) -> bool:
    """Whether the record's sandbox tool still runs: its pid, started when the record says
    (a reused pid is another process, never to be signalled)."""
    try:
        pid = int(record.get("pid", 0))
    except (TypeError, ValueError):
        return False
    start = process_start(pid) if pid > 0 else ""
    return bool(start) and start == record.get("pid_start")
