"""The ``runsc`` tool: finding it, its command lines (pure), running it about one of our
sandboxes, and ending a sandbox with all that belongs to it.

Who calls what: ``runsc.py`` (the backend: run, restore, kill, remove, the probe),
``runsc_snapshots.py`` (checkpoint) and ``runsc_inventory.py`` (ps, gc) build every runsc
call with :func:`runsc_argv` and our global flags, in :data:`TOOL_ENV` and ``/``; a
sandbox of ours is a :class:`Running`, ended by :func:`end_sandbox` (blocking).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SandboxError
from ..settings import BY_NAME
from .cgroups import Cgroup, end_all
from .gvisor import CURRENT_RUNSC, CURRENT_RUNTIME, CURRENT_SETUP, REQUIRED_RUNSC_ARGS
from .runsc_oci import cgroups_path
from .spawned import STDERR_TAIL, TOOL_ENV, tail

RUNSC_PATHS = ("/usr/bin/runsc", "/usr/local/bin/runsc", "/usr/sbin/runsc")
# Global flags of every runsc call. --overlay2=none: the root is read-only and every
# writable mount a tmpfs inside the sandbox, so runsc needs no overlay (whose default
# medium would put a file store next to the shared root filesystem).
RUNSC_FLAGS = (*REQUIRED_RUNSC_ARGS, "--overlay2=none")
PLATFORMS = BY_NAME["platform"].choices
SETUP_HINT = "install gVisor: `sudo sandbox-kernel setup-host` (or apt-get install runsc)"


def runsc_argv(
    runsc: str, state: Path, *args: str, rootless: bool, flags: Iterable[str] = RUNSC_FLAGS
) -> list[str]:
    """A runsc command line with our global flags (pure): ``--root`` (this user's state),
    ``--rootless`` for an ordinary user, ``--network=none``, ``--oci-seccomp``."""
    mode = ["--rootless"] if rootless else []
    return [runsc, "--root", str(state), *mode, *flags, *args]


def platform_flags(platform: str) -> tuple[str, ...]:
    """Every runsc call's flags for ``platform`` (pure)."""
    return (*RUNSC_FLAGS, f"--platform={platform}")


def root_cgroup_dirs(name: str) -> list[Path]:
    """The folders of the cgroup runsc makes as root, in every v1 hierarchy (runsc creates
    it in all of them, not only memory, cpu and pids)."""
    base = Path("/sys/fs/cgroup")
    try:
        hierarchies = [d for d in base.iterdir() if d.is_dir()]
    except OSError:
        return []
    return [d / cgroups_path(name).lstrip("/") for d in hierarchies]


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
    shape: str = ""  # the settings and policy it runs under (``runsc_snapshots.shape``)
    restored_from: str = ""  # the snapshot it was restored from ('' : started afresh)


def runsc_call(
    running: Running, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        runsc_argv(running.runsc, running.state, *args, rootless=running.rootless,
                   flags=running.flags),
        capture_output=True, text=True, timeout=timeout, cwd="/", env=TOOL_ENV,
    )  # fmt: skip


def runsc_kill(running: Running, name: str) -> None:
    """SIGKILL to every process of the container: its init (the agent) ending ends the
    sandbox, and its pipe closes."""
    try:
        runsc_call(running, "kill", "--all", name, "KILL", timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        pass


def end_sandbox(running: Running, name: str) -> str:
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
        done = runsc_call(running, "delete", "--force", name)
        if done.returncode != 0 and "does not exist" not in done.stderr:
            said = done.stderr.strip()[-STDERR_TAIL:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        said = str(exc)
    remove_locks(running.state, name)
    if running.cgroup is not None:
        running.cgroup.remove()
    if not running.rootless:
        end_all(root_cgroup_dirs(name))
    err = tail(running.stderr)
    running.stderr = -1
    shutil.rmtree(running.bundle, ignore_errors=True)
    return f"{said}; its stderr: {err}" if said and err else said


def remove_locks(state: Path, name: str) -> None:
    """runsc's lock file of a deleted sandbox: seen left behind when our kill or delete ran
    while runsc was cleaning up (it names only this sandbox, which is gone)."""
    for lock in state.glob(f"{name}_sandbox:*.lock"):
        lock.unlink(missing_ok=True)
