"""runsc backend: gVisor without Docker; the provisioner runs ``runsc`` itself.

Who calls what: as for the pipe backends (:mod:`.pipe`; what both share is in
:mod:`.spawned`), the provisioner (and the warm pool, through ``boot``) calls
``preflight``; ``create`` writes an OCI bundle (``runsc_oci.oci_config``, pure) and runs
``runsc run --detach`` with two pipes as the container's stdin and stdout, where the
agent's stage 1 waits for its bundle; ``runsc`` returns once the sandbox runs, so no runsc
process waits beside each sandbox (the sandbox's end is seen as its pipe closing);
``attach`` hands our ends to ``AgentSession.attach_pipes`` (raw bytes, no daemon, no
socket); ``start`` has nothing left to do; ``kill`` is ``runsc kill``; ``remove`` is
``runsc delete --force`` (which ends a sandbox still running), then the bundle and every
cgroup folder go (``runsc_tool.end_sandbox``). ``sandbox-kernel ps``/``gc`` call
``list_sandboxes`` and ``remove_orphans`` (``runsc_inventory.py``). Every blocking step
runs in a worker thread.

Snapshots (root only; ``pool_snapshots``; ``runsc_snapshots.py``): the warm pool asks
``checkpoint`` for a ``runsc checkpoint`` of its pre-initialised sandbox and ``restore``
for new sandboxes from it (``runsc restore --detach``), each with its own name, bundle (the
same ``oci_config``), cgroup and pipes, under the same flags.

``platform``: how gVisor intercepts system calls, ``--platform=systrap`` (runsc's default)
or ``ptrace`` (a much smaller idle cost on this runsc release; docs/backends.md).

Two modes, chosen by who runs the server:

* **root**: memory (no swap), CPU and pids caps through the cgroup runsc creates from
  ``linux.cgroupsPath`` + ``linux.resources`` (cgroup v1). The path has one component,
  ``/sandbox-kernel-runsc-<name>``, so runsc leaves no parent folder behind.
* **rootless** (an ordinary user's server): ``runsc --rootless``; the sentry and gofer run as
  that user in user and network namespaces of their own. runsc ignores cgroup limits there,
  so the sandbox joins a per-sandbox cgroup under the folder an administrator delegated to
  the user (:func:`.cgroups.delegated_cgroups`) where one exists; every
  limit without one is reported by ``gaps`` (refused unless accepted), and a sandbox
  without a memory cgroup still gets RLIMIT_AS = ``memory_limit`` per process.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from .. import endings
from ..errors import PolicyError, SandboxError
from ..image.rootfs import check_rootfs, rootfs_for
from ..policy import SandboxPolicy, build_policy
from ..settings import BY_NAME, check
from . import runsc_inventory, runsc_snapshots
from .base import Preflight, SandboxInfo, Snapshots
from .capabilities import refuse_unenforced
from .cgroups import (
    CONTROLLERS,
    Cgroup,
    DelegatedCgroup,
    delegated_cgroups,
    delegation_hint,
    kill_members,
    user_name,
    v1_mounts,
)
from .gvisor import CURRENT_RUNTIME
from .launcher import launcher_argv
from .owner import Owner
from .runsc_inventory import set_annotations, state_base
from .runsc_oci import cgroups_path, oci_config
from .runsc_snapshots import ROOTLESS_NO_SNAPSHOTS, SNAPSHOTS, SnapshotRecord, shape
from .runsc_tool import (
    PLATFORMS,
    Running,
    end_sandbox,
    find_runsc,
    platform_flags,
    runsc_argv,
    runsc_kill,
)
from .spawned import TOOL_ENV, Sandboxes, SpawnedBackend, output_pipe, read_tail


@functools.lru_cache(maxsize=8)
def _probe(runsc: str, rootfs: str, rootless: bool, platform: str = PLATFORMS[0]) -> str:
    """Run ``/bin/true`` in a minimal sandbox of this shape; '' when it works, else why not."""
    base = state_base()
    name = f"sandbox-kernel-probe-{secrets.token_hex(4)}"
    bundle = base / "bundles" / name
    bundle.mkdir(mode=0o700)
    flags = platform_flags(platform)
    try:
        config = oci_config(
            build_policy(image="probe"),
            rootfs=Path(rootfs),
            command=["/bin/true"],
            annotations=Owner.current().labels(),
            cgroups_path=None,
        )
        (bundle / "config.json").write_text(json.dumps(config))
        argv = runsc_argv(runsc, base / "state", "run", "--bundle", str(bundle), name,
                          rootless=rootless, flags=flags)  # fmt: skip
        try:
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                cwd="/", env=TOOL_ENV,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return "runsc did not run a probe sandbox within 60 s"
        if proc.returncode != 0:
            hint = (
                " (rootless runsc needs unprivileged user namespaces: sysctl "
                "user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1)"
                if rootless
                else ""
            )
            return (
                f"runsc (platform {platform}) cannot run a sandbox here: "
                f"{proc.stderr.strip()[-400:]}{hint}"
            )
        return ""
    finally:
        subprocess.run(
            runsc_argv(runsc, base / "state", "delete", "--force", name, rootless=rootless,
                       flags=flags),
            capture_output=True, timeout=30, cwd="/", env=TOOL_ENV,
        )  # fmt: skip
        shutil.rmtree(bundle, ignore_errors=True)


class RunscBackend(SpawnedBackend[Running]):
    name = "runsc"
    label = "sandboxed, runsc"  # short: the launcher wraps long names
    tool = "runsc"
    _sandboxes: ClassVar[Sandboxes[Running]] = Sandboxes()

    def __init__(
        self,
        log: logging.Logger | None = None,
        *,
        accept_unenforced: Iterable[str] = (),
        rootfs: str = "",
        platform: str = BY_NAME["platform"].default,
        runtime: str = BY_NAME["runtime"].default,
        pool_snapshots: bool = BY_NAME["pool_snapshots"].default,
        pool_snapshot_restores: int = BY_NAME["pool_snapshot_restores"].default,
        pool_snapshot_age: float = BY_NAME["pool_snapshot_age"].default,
        **_other: Any,
    ) -> None:
        super().__init__(log, accept_unenforced=accept_unenforced, rootfs=rootfs)
        self.platform: str = check("platform", platform)
        self.flags = platform_flags(platform)
        if runtime not in ("runsc", CURRENT_RUNTIME):
            raise PolicyError(f"runtime: the runsc backend runs 'runsc' or {CURRENT_RUNTIME!r}, "
                              f"not {runtime!r}")  # fmt: skip
        self.runtime = runtime
        self.pool_snapshots: bool = check("pool_snapshots", pool_snapshots)
        self.pool_snapshot_restores: int = check("pool_snapshot_restores", pool_snapshot_restores)
        self.pool_snapshot_age: float = check("pool_snapshot_age", pool_snapshot_age)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "platform": self.platform,
            "runtime": self.runtime,
            "pool_snapshots": self.pool_snapshots,
        }

    @staticmethod
    def rootless() -> bool:
        return os.geteuid() != 0

    # -- preflight ----------------------------------------------------------------------------
    def host_gaps(self, policy: SandboxPolicy) -> tuple[Path, dict[str, str]]:
        """(rootfs, every property this host cannot enforce for ``policy``); blocking."""
        runsc = find_runsc(self.runtime)
        rootfs = check_rootfs(rootfs_for(policy.image, self.rootfs_override))
        rootless = self.rootless()
        gaps: dict[str, str] = {}
        mounts = v1_mounts()
        if rootless:
            delegated = delegated_cgroups(mounts=mounts)
            user = user_name(os.geteuid())
            for controller, prop in CONTROLLERS.items():
                if controller in delegated:
                    continue
                if controller in mounts:
                    why = f"no cgroup v1 {controller} folder is delegated to user {user!r}"
                else:
                    why = (
                        f"this host has no cgroup v1 {controller} controller (delegation of "
                        "cgroup v2 is not implemented)"
                    )
                if controller == "memory":
                    why += "; each process is still held to memory_limit of address space"
                gaps[prop] = f"rootless runsc applies no cgroup limits, and {why}"
        else:
            for controller, prop in CONTROLLERS.items():
                where = mounts.get(controller)
                if where is None:
                    gaps[prop] = (
                        f"no cgroup v1 {controller} controller is mounted (this backend does "
                        "not implement cgroup v2 yet)"
                    )
                elif not os.access(where, os.W_OK):
                    gaps[prop] = f"{where} is not writable"
        why = _probe(runsc, str(rootfs), rootless, self.platform)
        if why:
            # Without a sandbox, nothing is isolated: every property is missing.
            gaps.update(host_files=why, network=why, unprivileged_user=why)
        return rootfs, gaps

    def _preflight(self, policy: SandboxPolicy) -> Preflight:
        gaps = self.gaps(policy)
        try:
            warnings = refuse_unenforced(self.name, gaps, self.accept_unenforced)
        except SandboxError as exc:
            if self.rootless() and set(gaps) & set(CONTROLLERS.values()):
                user = user_name(os.geteuid())
                raise SandboxError(
                    f"{exc}. To enforce the limits: {delegation_hint(user)}"
                ) from None
            raise
        return Preflight(
            runtime=self.runtime, warnings=warnings, foreign_kernel=True, kernel_user_apart=True
        )

    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        preflight = await asyncio.to_thread(self._preflight, policy)
        OomWatcher.ensure_running(self.log)
        await self.reap_orphans_once()
        return preflight

    # -- lifecycle ----------------------------------------------------------------------------
    def _spawn(
        self,
        policy: SandboxPolicy,
        command: list[str],
        name: str,
        owner: Owner,
        snapshot: SnapshotRecord | None = None,
    ) -> str:
        """``runsc run --detach`` (or ``restore --detach`` from ``snapshot``) of a new bundle,
        its stdin and stdout our pipes; returns once runsc has the sandbox running."""
        rootfs, gaps = self.host_gaps(policy)
        refuse_unenforced(self.name, gaps, self.accept_unenforced)
        runsc, rootless = find_runsc(self.runtime), self.rootless()
        base = state_base()
        bundle = base / "bundles" / name
        bundle.mkdir(mode=0o700)
        cgroup: Cgroup | None = None
        # runsc's stderr is also the container's: a file of the host there could be reopened
        # through /proc/<pid>/fd/2 inside. A memfd has no path.
        stderr = os.memfd_create(f"sandbox-kernel-runsc-stderr-{name}", os.MFD_CLOEXEC)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = output_pipe()
        running = Running(
            (stdin_w, stdout_r), runsc, base / "state", bundle, rootless, None, stderr,
            self.flags, tuple(command), shape(self.describe(), policy),
            snapshot.folder.name if snapshot else "",
        )  # fmt: skip
        verb = "restore" if snapshot else "run"
        try:
            delegated = delegated_cgroups() if rootless else {}
            config = oci_config(
                policy,
                rootfs=rootfs,
                command=command,
                annotations=owner.labels(),
                cgroups_path=None if rootless else cgroups_path(name),
                rlimit_as=rootless and "memory" not in delegated,
            )
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
            if delegated:
                cgroup = running.cgroup = DelegatedCgroup(name, delegated)
                cgroup.create(policy, pids=policy.pids_limit)
            args = ["run", "--detach"]
            if snapshot is not None:
                args = ["restore", "--detach", "--image-path", str(snapshot.folder / "image")]
            argv = runsc_argv(runsc, base / "state", *args, "--bundle", str(bundle), name,
                              rootless=rootless, flags=self.flags)  # fmt: skip
            if cgroup is not None:  # rootless: runsc joins the user's delegated cgroup first
                argv = launcher_argv(argv, cgroup_procs=cgroup.join_paths())
            proc = subprocess.Popen(
                argv,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr,
                cwd="/",
                env=TOOL_ENV,
                start_new_session=True,  # no terminal signal reaches runsc
            )
            try:
                code = proc.wait(timeout=policy.launch_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise SandboxError(
                    f"runsc {verb} did not start sandbox {name} within "
                    f"launch_timeout={policy.launch_timeout:g}s"
                ) from None
            if code != 0:
                raise SandboxError(f"runsc {verb} failed (exit code {code}): {read_tail(stderr)}")
        except BaseException:
            end_sandbox(running, name)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        self._sandboxes.add(name, running)
        return name

    def _claim(self, sandbox: Running, owner: Owner) -> None:
        set_annotations(sandbox.bundle, owner.labels())

    def _kill_one(self, sandbox_id: str, sandbox: Running) -> None:
        runsc_kill(sandbox, sandbox_id)

    @classmethod
    def _end_one(cls, sandbox_id: str, sandbox: Running) -> str:
        return end_sandbox(sandbox, sandbox_id)

    # -- snapshots ----------------------------------------------------------------------------
    def snapshots(self) -> Snapshots:
        return runsc_snapshots.offered(
            self.pool_snapshots,
            self.rootless(),
            self.pool_snapshot_restores,
            self.pool_snapshot_age,
        )

    async def checkpoint(self, sandbox_id: str, owner: Owner) -> str:
        running = self._sandboxes.find(sandbox_id)
        return await asyncio.to_thread(runsc_snapshots.checkpoint, running, sandbox_id, owner)

    async def restore(
        self,
        snapshot: str,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        owner: Owner,
        name: str,
    ) -> str:
        record = SNAPSHOTS.find(snapshot)
        if record is None:
            raise SandboxError(f"snapshot {snapshot} is gone")
        if self.rootless():
            raise SandboxError(ROOTLESS_NO_SNAPSHOTS)
        if record.shape != shape(self.describe(), policy):
            raise SandboxError(
                f"snapshot {snapshot} was made under other settings or another policy"
            )
        return await asyncio.to_thread(
            self._spawn, policy, list(record.command), name, owner, record
        )

    async def remove_snapshot(self, snapshot: str) -> None:
        try:
            await asyncio.to_thread(runsc_snapshots.remove, snapshot)
        except RuntimeError:  # interpreter shutdown
            runsc_snapshots.remove(snapshot)

    @classmethod
    def remove_all(cls) -> None:
        """At exit: remove every sandbox of this process still running (warm-pool sandboxes,
        kernels nobody shut down) and every snapshot it made. Registered with ``atexit``."""
        super().remove_all()
        runsc_snapshots.remove_all()

    # -- orphans (gc, and once per process at the first launch) ---------------------------
    @classmethod
    def remove_orphans(cls) -> list[str]:
        """Remove this user's sandboxes, bundles, cgroups and snapshots left by Jupyter
        processes of this host that died. Blocking: run in a thread."""
        return runsc_inventory.remove_orphans()

    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        return runsc_inventory.sandbox_table()


atexit.register(RunscBackend.remove_all)


class OomWatcher:
    """Ends a sandbox as soon as the OOM killer strikes in its memory cgroup.

    The OOM killer may pick one of gVisor's stub processes rather than the sentry, and the
    sandbox then hangs at its memory cap (seen here: a kernel allocating in steps). Like
    the Docker backend's watcher, this turns that into a prompt death that jupyter_client's
    restarter sees: one daemon thread per process, started by the first preflight, reads
    ``oom_kill`` of each running sandbox's ``memory.oom_control`` four times a second and
    SIGKILLs every process of a sandbox whose count moved.
    """

    INTERVAL = 0.25
    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls, log: logging.Logger) -> None:
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(
                    target=cls._run, args=(log,), name="sandbox-kernel-runsc-oom", daemon=True
                )
                cls._thread.start()

    @staticmethod
    def memory_dir(name: str, running: Running) -> Path | None:
        if running.cgroup is not None:
            return running.cgroup.dirs.get("memory")
        if not running.rootless:
            return Path("/sys/fs/cgroup/memory") / cgroups_path(name).lstrip("/")
        return None

    @classmethod
    def _run(cls, log: logging.Logger) -> None:
        ended: set[str] = set()
        while True:
            time.sleep(cls.INTERVAL)
            running = RunscBackend._sandboxes.listed()
            ended &= {name for name, _r in running}
            for name, one in running:
                where = cls.memory_dir(name, one)
                if name in ended or where is None or oom_kills(where) == 0:
                    continue
                ended.add(name)
                log.warning("sandbox %s hit its memory limit: ending it", name)
                endings.report(name, endings.MEMORY_LIMIT)
                kill_members(where)


def oom_kills(memory_dir: Path) -> int:
    """How many processes the OOM killer ended in a cgroup v1 memory folder (0 if gone)."""
    try:
        for line in (memory_dir / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
