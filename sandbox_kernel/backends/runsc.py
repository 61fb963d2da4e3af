"""runsc backend: gVisor without Docker; the provisioner runs ``runsc`` itself.

Who calls what: as for the pipe backends (:mod:`.pipe`), the provisioner (and the warm
pool, through ``boot``) calls ``preflight``; ``create`` writes an OCI bundle (``oci_config``,
pure) and runs ``runsc run --detach`` with two pipes as the container's stdin and stdout,
where the agent's stage 1 waits for its bundle; ``runsc`` returns once the sandbox runs,
so no runsc process waits beside each sandbox (the sandbox's end is seen as its pipe
closing); ``attach`` hands our ends to ``AgentSession.attach_pipes`` (raw bytes, no daemon,
no socket); ``start`` has nothing left to do; ``kill`` is ``runsc kill``; ``remove`` is
``runsc delete --force`` (which ends a sandbox still running), then the bundle and every
cgroup folder go. ``sandbox-kernel ps``/``gc`` call :func:`sandbox_table` and
:meth:`RunscBackend.remove_orphans`. Every blocking step runs in a worker thread.

Snapshots (root only; ``pool_snapshots``): the warm pool asks ``checkpoint`` for an
uncompressed ``runsc checkpoint`` of its pre-initialised sandbox into
``<state>/images/<name>/image`` (about 50 MiB: the sandbox's memory), and ``restore`` for
new sandboxes from it (``runsc restore --detach``), each with its own name, bundle (the
same ``oci_config``), cgroup and pipes, under the same flags. Snapshots go with their
pool (``remove_snapshot``), at exit (``remove_all``) and, after a crash, with ``gc``.
Rootless runsc cannot restore, so the pool starts fresh sandboxes there (a logged note).

``platform``: how gVisor intercepts system calls, ``--platform=systrap`` (runsc's default)
or ``ptrace`` (a much smaller idle cost on this runsc release; docs/backends.md).

The sandbox is the Docker backend's (``container_spec``) in OCI terms: ``--network=none``,
our seccomp profile enforced by gVisor (``--oci-seccomp``), the exported image root
filesystem read-only and no host mount at all (proc, sysfs, runsc's own /dev, devpts, and
size-capped ``noexec,nosuid,nodev`` tmpfs for /tmp, /dev/shm and the home), hostname
``sandbox``, the agent as the sandbox's root with only the capabilities it needs to run the
kernel as uid/gid 1000 with none (``process_identity``), no_new_privs, RLIMIT_NPROC
(counted by gVisor per sandbox), RLIMIT_NOFILE and no core dumps.

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
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from .. import endings
from ..errors import PolicyError, SandboxError
from ..image.rootfs import check_rootfs, rootfs_for
from ..policy import SANDBOX_PATH, SandboxPolicy, build_policy
from ..relay.session import AgentSession
from ..relay.thread import RelayThread
from ..settings import BY_NAME, check
from . import state
from .base import Preflight, SandboxBackend, SandboxInfo, Snapshots
from .capabilities import check_accepted, refuse_unenforced
from .cgroups import (
    CFS_PERIOD_US,
    CONTROLLERS,
    Cgroup,
    DelegatedCgroup,
    cfs_quota_us,
    delegated_cgroups,
    delegation_hint,
    end_all,
    kill_members,
    user_name,
    v1_mounts,
)
from .gvisor import (
    AGENT_CAPABILITIES,
    CURRENT_RUNSC,
    CURRENT_RUNTIME,
    CURRENT_SETUP,
    REQUIRED_RUNSC_ARGS,
)
from .launcher import launcher_argv
from .owner import Owner
from .seccomp import seccomp_profile

ROOT_STATE = state.root_base("runsc")
CGROUP_PREFIX = "sandbox-kernel-runsc-"
SHM_BYTES = 64 * 2**20  # Docker's default /dev/shm size
STDERR_TAIL = 4000
BUNDLE_GRACE = 300.0  # seconds: a bundle without a readable config.json may be being written
RUNSC_PATHS = ("/usr/bin/runsc", "/usr/local/bin/runsc", "/usr/sbin/runsc")
# Global flags of every runsc call. --overlay2=none: the root is read-only and every
# writable mount a tmpfs inside the sandbox, so runsc needs no overlay (whose default
# medium would put a file store next to the shared root filesystem).
RUNSC_FLAGS = (*REQUIRED_RUNSC_ARGS, "--overlay2=none")
PLATFORMS = BY_NAME["platform"].choices
SNAPSHOT_PREFIX = "sandbox-kernel-snapshot-"
ROOTLESS_NO_SNAPSHOTS = (
    "rootless runsc cannot restore a checkpoint, so the warm pool starts each sandbox afresh "
    "(pool_snapshots=False silences this note)"
)
SETUP_HINT = "install gVisor: `sudo sandbox-kernel setup-host` (or apt-get install runsc)"

# Docker's defaults for a container's /proc and /sys.
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip


# -- the bundle (pure) ----------------------------------------------------------------------
def process_identity(policy: SandboxPolicy) -> dict[str, Any]:
    """Who the sandbox's first process (the agent) is, as for the Docker backend under gVisor:
    root of the sandbox's own kernel holding only AGENT_CAPABILITIES (none inheritable or
    ambient), no_new_privs, in ``/``; it runs the kernel under the policy's uid with no
    capability (``Preflight.kernel_user_apart``), so kernel code cannot reach the agent's
    pipe or process. The one place that says who the agent is."""
    caps = [f"CAP_{c}" for c in AGENT_CAPABILITIES]
    return {
        # No "additionalGids" (none is the same as []): a current runsc (2026) checks that a
        # restore's spec equals the checkpointed one, which it saved without an empty list,
        # so [] here made every snapshot restore fail ("User" does not match).
        "user": {"uid": 0, "gid": 0},
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": [],
            "ambient": [],
        },
        "noNewPrivileges": True,
        "cwd": "/",
    }


def cgroups_path(name: str) -> str:
    """The cgroup runsc creates (as root) for sandbox ``name``: one level, so no parent
    folder is left behind when runsc removes it."""
    return "/" + CGROUP_PREFIX + name


def _mount(destination: str, kind: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": kind, "options": list(options)}


def _mounts(policy: SandboxPolicy) -> list[dict[str, Any]]:
    """No host path at all: kernel file systems, runsc's own /dev, and size-capped tmpfs for
    everything writable (nothing there can be executed)."""
    uid, _, gid = policy.user.partition(":")
    safe = ("nosuid", "noexec", "nodev")
    return [
        _mount("/proc", "proc", *safe),
        _mount("/dev", "tmpfs", "nosuid", "noexec", "strictatime", "mode=755", "size=65536k"),
        _mount("/dev/pts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666"),
        _mount("/dev/shm", "tmpfs", *safe, "mode=1777", f"size={SHM_BYTES}"),
        _mount("/dev/mqueue", "mqueue", *safe),
        _mount("/sys", "sysfs", *safe, "ro"),
        _mount("/tmp", "tmpfs", *safe, "mode=1777", f"size={policy.tmp_bytes}"),
        _mount(policy.home, "tmpfs", *safe, "mode=0700", f"size={policy.home_bytes}",
               f"uid={uid}", f"gid={gid or uid}"),
        # gVisor puts /dev/net/tun in every sandbox; an empty read-only tmpfs hides it (mount
        # and device mknod are refused by seccomp, so it cannot be uncovered).
        _mount("/dev/net", "tmpfs", "ro", *safe, "size=4k", "mode=0755"),
    ]  # fmt: skip


def oci_config(
    policy: SandboxPolicy,
    *,
    rootfs: Path,
    command: list[str],
    annotations: Mapping[str, str],
    cgroups_path: str | None,
    rlimit_as: bool = False,
) -> dict[str, Any]:
    """The bundle's ``config.json``: ``policy`` in OCI terms (pure, unit-tested).

    ``cgroups_path``: where runsc creates the sandbox's cgroup with the policy's memory, CPU
    and pids caps (root); None: no cgroup from runsc (rootless runsc ignores it anyway).
    ``rlimit_as``: also cap each process's address space at ``memory_limit`` (rootless
    without a memory cgroup: the only memory bound left).
    """
    rlimits = [
        {"type": "RLIMIT_NOFILE", "soft": policy.nofile, "hard": policy.nofile},
        {"type": "RLIMIT_NPROC", "soft": policy.nproc, "hard": policy.nproc},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    if rlimit_as:
        rlimits.append(
            {"type": "RLIMIT_AS", "soft": policy.memory_bytes, "hard": policy.memory_bytes}
        )
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "seccomp": seccomp_profile(host_kernel=False),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
        linux["resources"] = {
            # swap = memory + swap in OCI terms: equal to the limit means no swap at all.
            "memory": {"limit": policy.memory_bytes, "swap": policy.memory_bytes},
            "cpu": {"quota": cfs_quota_us(policy.cpus), "period": CFS_PERIOD_US},
            # gVisor counts RLIMIT_NPROC per sandbox (a fork bomb meets EAGAIN inside); the
            # host pids cgroup is the looser backstop, as under Docker.
            "pids": {"limit": policy.pids_limit},
        }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            **process_identity(policy),
            "args": list(command),
            "env": [f"HOME={policy.home}", f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8"],
            "rlimits": rlimits,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": _mounts(policy),
        "linux": linux,
        "annotations": dict(annotations),
    }


def runsc_argv(
    runsc: str, state: Path, *args: str, rootless: bool, flags: Iterable[str] = RUNSC_FLAGS
) -> list[str]:
    """A runsc command line with our global flags (pure): ``--root`` (this user's state),
    ``--rootless`` for an ordinary user, ``--network=none``, ``--oci-seccomp``."""
    mode = ["--rootless"] if rootless else []
    return [runsc, "--root", str(state), *mode, *flags, *args]


def state_bases(euid: int, environ: Mapping[str, str]) -> list[Path]:
    """Where this user's runsc state and bundles may live, preferred first (pure)."""
    return state.bases("runsc", euid, environ)


def state_base() -> Path:
    """This user's runsc folder: ``state/`` for ``runsc --root``, ``bundles/``, ``images/``
    (the warm pools' snapshots)."""
    return state.state_base("runsc", ("state", "bundles", "images"))


def platform_flags(platform: str) -> tuple[str, ...]:
    """Every runsc call's flags for ``platform`` (pure)."""
    return (*RUNSC_FLAGS, f"--platform={platform}")


def existing_bases() -> list[Path]:
    """Every runsc state folder of this user that exists and is private (ps, gc)."""
    return state.existing_bases("runsc")


# -- cgroups ------------------------------------------------------------------------------------
def root_cgroup_dirs(name: str) -> list[Path]:
    """The folders of the cgroup runsc makes as root, in every v1 hierarchy (runsc creates
    it in all of them, not only memory, cpu and pids)."""
    base = Path("/sys/fs/cgroup")
    try:
        hierarchies = [d for d in base.iterdir() if d.is_dir()]
    except OSError:
        return []
    return [d / cgroups_path(name).lstrip("/") for d in hierarchies]


# -- the backend --------------------------------------------------------------------------------
def find_runsc(runtime: str = "runsc") -> str:
    """The runsc binary of ``runtime`` (the setting): ``runsc``, the first on PATH (Debian's);
    ``runsc-current``, setup-host's build of the current gVisor, never another in its place."""
    if runtime == CURRENT_RUNTIME:
        if not os.access(CURRENT_RUNSC, os.X_OK):
            raise SandboxError(
                f"runtime {runtime}: {CURRENT_RUNSC} is not installed: build it with "
                f"`{CURRENT_SETUP}`, or use runtime 'runsc'"
            )
        return CURRENT_RUNSC
    found = shutil.which("runsc") or next((p for p in RUNSC_PATHS if os.access(p, os.X_OK)), "")
    if not found:
        raise SandboxError(f"`runsc` (gVisor) is not installed: {SETUP_HINT}")
    return found


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
                cwd="/", env=_runsc_env(),
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
            capture_output=True, timeout=30, cwd="/", env=_runsc_env(),
        )  # fmt: skip
        shutil.rmtree(bundle, ignore_errors=True)


def _runsc_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class Running:
    """One runsc sandbox of ours (run detached: no runsc process waits beside it) and what
    belongs to it."""

    pipes: tuple[int, int] | None  # our ends (its stdin, its stdout) until a session takes them
    runsc: str
    state: Path
    bundle: Path
    rootless: bool
    cgroup: Cgroup | None  # rootless: the sandbox's cgroup under the user's delegation
    stderr: int = -1  # a memfd: runsc's and the sandbox's stderr (-1: none, an orphan's)
    flags: tuple[str, ...] = RUNSC_FLAGS  # global flags of every runsc call about it
    command: tuple[str, ...] = ()  # the bundle's process (a snapshot's restores reuse it)
    shape: str = ""  # the settings and policy it runs under (``_shape``)
    restored_from: str = ""  # the snapshot it was restored from ('' : started afresh)


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot this process made: where, and what its restores must match."""

    folder: Path  # <state>/images/<name>: owner.json, and image/ (runsc's files)
    command: tuple[str, ...]
    shape: str  # the backend's settings and the policy it was made under (a digest)


def _shape(describe: Mapping[str, Any], policy: SandboxPolicy) -> str:
    text = json.dumps([describe, asdict(policy)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RunscBackend(SandboxBackend):
    name = "runsc"
    label = "sandboxed, runsc"  # short: the launcher wraps long names

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
        super().__init__(log)
        self.accept_unenforced = check_accepted(accept_unenforced)
        self.rootfs_override = rootfs
        self.platform: str = check("platform", platform)
        self.flags = platform_flags(platform)
        if runtime not in ("runsc", CURRENT_RUNTIME):
            raise PolicyError(f"runtime: the runsc backend runs 'runsc' or {CURRENT_RUNTIME!r}, "
                              f"not {runtime!r}")  # fmt: skip
        self.runtime = runtime
        self.pool_snapshots: bool = check("pool_snapshots", pool_snapshots)
        self.pool_snapshot_restores: int = check("pool_snapshot_restores", pool_snapshot_restores)
        self.pool_snapshot_age: float = check("pool_snapshot_age", pool_snapshot_age)

    # Shared by every instance: a warm pool's sandbox is removed by the claiming
    # provisioner's backend object, not the pool's.
    _sandboxes: ClassVar[dict[str, Running]] = {}
    _snapshots: ClassVar[dict[str, SnapshotRecord]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "rootfs": self.rootfs_override,
            "accept_unenforced": sorted(self.accept_unenforced),
            "platform": self.platform,
            "runtime": self.runtime,
            "pool_snapshots": self.pool_snapshots,
        }

    @staticmethod
    def rootless() -> bool:
        return os.geteuid() != 0

    # -- preflight ----------------------------------------------------------------------------
    def gaps(self, policy: SandboxPolicy) -> dict[str, str]:
        return self.host_gaps(policy)[1]

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
        stdout_r, stdout_w = os.pipe()
        running = Running(
            (stdin_w, stdout_r), runsc, base / "state", bundle, rootless, None, stderr,
            self.flags, tuple(command), _shape(self.describe(), policy),
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
                env=_runsc_env(),
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
                raise SandboxError(f"runsc {verb} failed (exit code {code}): {_read_tail(stderr)}")
        except BaseException:
            _end(running, name)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        with self._lock:
            self._sandboxes[name] = running
        return name

    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        return await asyncio.to_thread(self._spawn, policy, command, name, owner)

    async def claimed(self, sandbox_id: str, owner: Owner) -> None:
        with self._lock:
            running = self._sandboxes.get(sandbox_id)
        if running is not None:
            await asyncio.to_thread(_set_annotations, running.bundle, owner.labels())

    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        with self._lock:
            running = self._sandboxes.get(sandbox_id)
            pipes = running.pipes if running else None
            if running:
                running.pipes = None
        if pipes is None:
            raise SandboxError(f"sandbox {sandbox_id} is gone or already attached")
        await RelayThread.get().run(session.attach_pipes(*pipes))

    async def start(self, sandbox_id: str) -> None:
        """Nothing to do: the sandbox runs since ``create`` and the agent waits."""

    def _kill(self, sandbox_id: str) -> None:
        with self._lock:
            running = self._sandboxes.get(sandbox_id)
        if running is not None:
            _runsc_kill(running, sandbox_id)

    def _remove(self, sandbox_id: str) -> None:
        with self._lock:
            running = self._sandboxes.pop(sandbox_id, None)
        if running is None:
            return
        err = _end(running, sandbox_id)
        if err:
            self.log.warning("sandbox %s: runsc said: %s", sandbox_id, err)

    async def kill(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._kill, sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._remove, sandbox_id)
        except RuntimeError:  # interpreter shutdown: no new worker threads, so block instead
            self._remove(sandbox_id)

    # -- snapshots ----------------------------------------------------------------------------
    def snapshots(self) -> Snapshots:
        if not self.pool_snapshots:
            return Snapshots(False)
        if self.rootless():
            return Snapshots(False, note=ROOTLESS_NO_SNAPSHOTS)
        return Snapshots(
            True, max_restores=self.pool_snapshot_restores, max_age=self.pool_snapshot_age
        )

    def _checkpoint(self, sandbox_id: str, owner: Owner) -> str:
        with self._lock:
            running = self._sandboxes.get(sandbox_id)
        if running is None:
            raise SandboxError(f"sandbox {sandbox_id} is gone")
        if running.rootless:
            raise SandboxError(ROOTLESS_NO_SNAPSHOTS)
        name = SNAPSHOT_PREFIX + secrets.token_hex(6)
        folder = state_base() / "images" / name
        folder.mkdir(mode=0o700)
        record = SnapshotRecord(folder, running.command, running.shape)
        with self._lock:  # from now on, remove_all (at exit) deletes it too
            self._snapshots[name] = record
        try:
            (folder / "owner.json").write_text(json.dumps(owner.labels()))
            # Uncompressed: 4x faster to write and to restore, and a restored sandbox does
            # not keep the decompressor's ~50 MiB of heap (docs/backends.md).
            done = _runsc(running, "checkpoint", "--compression=none",
                          "--image-path", str(folder / "image"), sandbox_id,
                          timeout=120)  # fmt: skip
            if done.returncode != 0:
                raise SandboxError(f"runsc checkpoint failed: {done.stderr.strip()[-STDERR_TAIL:]}")
        except BaseException:
            self._remove_snapshot(name)
            raise
        return name

    async def checkpoint(self, sandbox_id: str, owner: Owner) -> str:
        return await asyncio.to_thread(self._checkpoint, sandbox_id, owner)

    async def restore(
        self,
        snapshot: str,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        owner: Owner,
        name: str,
    ) -> str:
        with self._lock:
            record = self._snapshots.get(snapshot)
        if record is None:
            raise SandboxError(f"snapshot {snapshot} is gone")
        if self.rootless():
            raise SandboxError(ROOTLESS_NO_SNAPSHOTS)
        if record.shape != _shape(self.describe(), policy):
            raise SandboxError(
                f"snapshot {snapshot} was made under other settings or another policy"
            )
        return await asyncio.to_thread(
            self._spawn, policy, list(record.command), name, owner, record
        )

    def _remove_snapshot(self, snapshot: str) -> None:
        with self._lock:
            record = self._snapshots.pop(snapshot, None)
        if record is not None:
            shutil.rmtree(record.folder, ignore_errors=True)

    async def remove_snapshot(self, snapshot: str) -> None:
        try:
            await asyncio.to_thread(self._remove_snapshot, snapshot)
        except RuntimeError:  # interpreter shutdown
            self._remove_snapshot(snapshot)

    @classmethod
    def remove_all(cls) -> None:
        """At exit: remove every sandbox of this process still running (warm-pool sandboxes,
        kernels nobody shut down) and every snapshot it made. Registered with ``atexit``."""
        with cls._lock:
            running = list(cls._sandboxes.items())
            cls._sandboxes.clear()
            snapshots = list(cls._snapshots.values())
            cls._snapshots.clear()
        for name, one in running:
            try:
                _end(one, name)
            except Exception:
                pass
        for record in snapshots:
            shutil.rmtree(record.folder, ignore_errors=True)

    # -- orphans (gc, and once per process at the first launch) ---------------------------
    @classmethod
    def remove_orphans(cls) -> list[str]:
        """Remove this user's sandboxes, bundles, cgroups and snapshots left by Jupyter
        processes of this host that died. Blocking: run in a thread."""
        return remove_orphans()

    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        return sandbox_table()


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
            with RunscBackend._lock:
                running = list(RunscBackend._sandboxes.items())
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


def _runsc(running: Running, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        runsc_argv(running.runsc, running.state, *args, rootless=running.rootless,
                   flags=running.flags),
        capture_output=True, text=True, timeout=timeout, cwd="/", env=_runsc_env(),
    )  # fmt: skip


def _runsc_kill(running: Running, name: str) -> None:
    """SIGKILL to every process of the container: its init (the agent) ending ends the
    sandbox, and its pipe closes."""
    try:
        _runsc(running, "kill", "--all", name, "KILL", timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _end(running: Running, name: str) -> str:
    """End a sandbox (if it still runs), delete runsc's state of it, remove its cgroups and
    bundle; return what ``runsc delete`` said if it failed, with the tail of the sandbox's
    stderr."""
    if running.pipes is not None:
        for fd in running.pipes:
            os.close(fd)
        running.pipes = None
    said = ""
    try:
        # --force: SIGKILL to a sandbox still running, then its state and (as root) the
        # cgroup runsc made go; a stopped sandbox's state goes too.
        done = _runsc(running, "delete", "--force", name)
        if done.returncode != 0 and "does not exist" not in done.stderr:
            said = done.stderr.strip()[-STDERR_TAIL:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        said = str(exc)
    _remove_locks(running.state, name)
    if running.cgroup is not None:
        running.cgroup.remove()
    if not running.rootless:
        end_all(root_cgroup_dirs(name))
    err = _tail(running.stderr)
    running.stderr = -1
    shutil.rmtree(running.bundle, ignore_errors=True)
    return f"{said}; its stderr: {err}" if said and err else said


def _remove_locks(state: Path, name: str) -> None:
    """runsc's lock file of a deleted sandbox: seen left behind when our kill or delete ran
    while runsc was cleaning up (it names only this sandbox, which is gone)."""
    for lock in state.glob(f"{name}_sandbox:*.lock"):
        lock.unlink(missing_ok=True)


def _read_tail(fd: int) -> str:
    """The last STDERR_TAIL bytes of the memfd ``fd``, as text."""
    if fd < 0:
        return ""
    try:
        start = max(0, os.fstat(fd).st_size - STDERR_TAIL)
        return os.pread(fd, STDERR_TAIL, start).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _tail(fd: int) -> str:
    """:func:`_read_tail`, then close ``fd``."""
    try:
        return _read_tail(fd)
    finally:
        if fd >= 0:
            os.close(fd)


# -- ps and gc -----------------------------------------------------------------------------------
def _set_annotations(bundle: Path, annotations: dict[str, str]) -> None:
    """Record a new owner in a running sandbox's bundle (``ps`` reads it from there; runsc
    read its config at start)."""
    path = bundle / "config.json"
    try:
        config = json.loads(path.read_text())
        config["annotations"] = annotations
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


def _annotations(bundle: Path, uid: int | None = None) -> dict[str, str]:
    """The bundle's OCI annotations (our owner record). ``uid``: another user's bundle,
    read by root only if its config.json is a regular file of that user's (no link)."""
    config = bundle / "config.json"
    try:
        if uid is not None:
            st = config.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                return {}
        found = json.loads(config.read_text()).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _listed(runsc: str, base: Path, uid: int | None = None) -> list[dict[str, Any]]:
    """``runsc list`` of one state folder (id, pid, status, bundle). ``uid``: another
    user's folder (root's ``ps``), listed by runsc run as that user, never as root."""
    as_user: dict[str, Any] = {}
    if uid is not None:
        try:
            as_user = {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}
        except KeyError:
            return []
    rootless = uid is not None or os.geteuid() != 0
    proc = subprocess.run(
        runsc_argv(runsc, base / "state", "list", "--format", "json", rootless=rootless),
        capture_output=True, text=True, timeout=30, cwd="/", env=_runsc_env(), **as_user,
    )  # fmt: skip
    if proc.returncode != 0:
        return []
    try:
        found = json.loads(proc.stdout or "[]")
    except ValueError:
        return []
    return [c for c in found or [] if isinstance(c, dict) and isinstance(c.get("id"), str)]


def remove_orphans() -> list[str]:
    """Delete this user's runsc sandboxes whose Jupyter process is gone (their state, bundle
    and cgroups: run detached, a sandbox that ended with its server leaves them), bundles
    and cgroups of sandboxes whose server never cleaned up, and the snapshots of dead
    servers' warm pools. Blocking."""
    try:
        runsc = find_runsc()
    except SandboxError:
        return []
    host = socket.gethostname()
    rootless = os.geteuid() != 0
    removed: list[str] = []
    for base in existing_bases():
        listed = {c["id"] for c in _listed(runsc, base)}
        bundles = base / "bundles"
        on_disk = {d.name for d in bundles.iterdir() if d.is_dir()} if bundles.is_dir() else set()
        for name in sorted(listed | on_disk):
            owner = Owner.from_labels(_annotations(bundles / name))
            if owner is not None:
                if not owner.server_gone(host):
                    continue
            elif name not in on_disk or time.time() - _mtime(bundles / name) < BUNDLE_GRACE:
                continue  # not a sandbox of ours, or its bundle is being written right now
            running = Running(None, runsc, base / "state", bundles / name, rootless, None)
            if rootless:
                running.cgroup = DelegatedCgroup(name, delegated_cgroups())
            _end(running, name)
            removed.append(name)
        for lock in (base / "state").glob("*_sandbox:*.lock"):  # of sandboxes long gone
            name = lock.name.split("_sandbox:", 1)[0]
            if name not in listed and name not in on_disk:
                lock.unlink(missing_ok=True)
        for folder in _snapshot_folders(base):
            owner = Owner.from_labels(_snapshot_owner(folder))
            if owner is not None:
                if not owner.server_gone(host):
                    continue
            elif time.time() - _mtime(folder) < BUNDLE_GRACE:
                continue  # being made right now
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if not rootless:  # cgroups of sandboxes whose `runsc run` was killed before cleaning up
        live = {c["id"] for b in existing_bases() for c in _listed(runsc, b)}
        for d in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}*"):
            name = d.name[len(CGROUP_PREFIX) :]
            if name not in live and not (ROOT_STATE / "bundles" / name).exists():
                end_all([d])
    return removed


def _snapshot_folders(base: Path) -> list[Path]:
    images = base / "images"
    if not images.is_dir():
        return []
    return sorted(d for d in images.iterdir() if d.is_dir() and d.name.startswith(SNAPSHOT_PREFIX))


def _snapshot_owner(folder: Path) -> dict[str, str]:
    try:
        found = json.loads((folder / "owner.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _disk_bytes(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            total += f.lstat().st_size if f.is_file() else 0
        except OSError:
            pass
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _proc_times(pid: int) -> tuple[float, float]:
    """(CPU seconds used, start time in seconds since boot) of a process; (0, 0) if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[19]) / tick


def _memory_bytes(name: str, pid: int, uid: int | None) -> int:
    """The sandbox's memory: its memory cgroup's usage, else the sandbox process's RSS.
    ``uid``: a rootless sandbox's user (this process's, or another's for root's ``ps``),
    whose delegated cgroup holds it; None: root's sandbox, in runsc's own cgroup."""
    candidates = [] if uid is not None else [Path("/sys/fs/cgroup/memory") / cgroups_path(name)[1:]]
    delegated = delegated_cgroups(uid) if uid is not None else {}
    if "memory" in delegated:
        candidates.append(delegated["memory"] / name)
    for d in candidates:
        try:
            return int((d / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sandbox_table() -> list[SandboxInfo]:
    """This user's running runsc sandboxes and the warm pools' snapshots (blocking; for
    ``sandbox-kernel ps``)."""
    try:
        runsc = find_runsc()
    except SandboxError:
        return []
    rootless = os.geteuid() != 0
    found: list[tuple[Path, dict[str, Any], int | None]] = [
        (base, c, None) for base in existing_bases() for c in _listed(runsc, base)
    ]
    if not rootless:  # root sees every user's sandboxes too (rootless ones, under a hub)
        found += [
            (base, c, uid)
            for base, uid in state.users_bases("runsc")
            for c in _listed(runsc, base, uid)
        ]
    before = {c["id"]: _proc_times(int(c.get("pid") or 0)) for _b, c, _u in found}
    t0 = time.monotonic()
    time.sleep(0.3)
    elapsed = time.monotonic() - t0
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    rows = []
    for base, c, uid in found:
        if c.get("status") == "stopped":
            continue  # ended (its processes are gone); its server or gc removes it
        name, pid = c["id"], int(c.get("pid") or 0)
        bundle = Path(c.get("bundle") or base / "bundles" / name)
        if uid is not None:
            bundle = base / "bundles" / name  # never a path another user's state names
        owner = Owner.from_labels(_annotations(bundle, uid))
        if owner is None:
            continue  # not a sandbox of ours
        cpu, started = _proc_times(pid)
        rows.append(
            SandboxInfo(
                backend="runsc",
                name=name,
                id=name,
                kernel_id=owner.kernel_id,
                pooled=owner.pooled,
                user=owner.user,
                server_pid=owner.server_pid,
                uptime_s=uptime - started if started else 0.0,
                memory_mib=_memory_bytes(name, pid, os.geteuid() if rootless else uid) / 2**20,
                cpu_percent=100.0 * max(0.0, cpu - before[name][0]) / elapsed,
            )
        )
    for base in existing_bases():
        for folder in _snapshot_folders(base):
            owner = Owner.from_labels(_snapshot_owner(folder))
            if owner is None:
                continue
            rows.append(
                SandboxInfo(
                    backend="runsc",
                    name=folder.name,
                    id=folder.name,
                    kernel_id="",
                    pooled=True,
                    user=owner.user,
                    server_pid=owner.server_pid,
                    uptime_s=max(0.0, time.time() - _mtime(folder)),
                    memory_mib=0.0,
                    cpu_percent=None,
                    kind="snapshot",
                    disk_mib=_disk_bytes(folder) / 2**20,
                )
            )
    return rows
