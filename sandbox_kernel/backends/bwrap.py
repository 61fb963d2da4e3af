"""bubblewrap backend: no daemon, unprivileged namespaces on the host's kernel.

``bwrap_argv`` is the policy in bubblewrap's terms (pure, unit-tested). The
sandbox: every namespace unshared (user, pid, net: loopback only, ipc, uts,
cgroup), no further user namespaces (``--disable-userns``), the kernel root
filesystem bound read-only as ``/`` (never the host's), a minimal read-only
``/dev`` with a size-capped ``/dev/shm``, a private ``/proc``, size-capped
tmpfs ``/tmp`` and home, uid 1000 inside with no capabilities,
``--new-session`` (no TIOCSTI into a terminal), dying with its parent, and
the seccomp filter of :mod:`.bpf`. The agent is PID 1
(``--as-pid-1``). Cgroups, rlimits and the host uid come from :mod:`.pipe`.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from ..policy import SandboxPolicy
from .pipe import PipeBackend

MIN_VERSION = (0, 8, 0)  # --disable-userns, --size
SHM_BYTES = 64 * 2**20  # /dev/shm, as Docker sizes it by default


def bwrap_argv(
    policy: SandboxPolicy, rootfs: Path, command: list[str], seccomp: int, tool: str = "bwrap"
) -> list[str]:
    """The bwrap command line for ``command`` under ``policy`` (``seccomp``: an inherited fd
    with the compiled filter, or -1 for none)."""
    uid, _, gid = policy.user.partition(":")
    argv = [
        tool,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--uid", uid,
        "--gid", gid or uid,
        "--hostname", "sandbox",
        "--ro-bind", str(rootfs), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        # bwrap's /dev is a tmpfs owned by the sandbox's uid, without a size cap: give
        # /dev/shm a capped tmpfs of its own (as Docker's), then make /dev read-only.
        "--size", str(SHM_BYTES), "--perms", "1777", "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--size", str(policy.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp",
        "--size", str(policy.home_bytes), "--perms", "0700", "--tmpfs", policy.home,
        "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "HOME", policy.home,
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
        "--chdir", policy.home,
    ]  # fmt: skip
    if seccomp >= 0:
        argv += ["--seccomp", str(seccomp)]
    return [*argv, "--", *command]


def parse_version(text: str) -> tuple[int, ...]:
    """``bubblewrap 0.8.0`` -> (0, 8, 0); () when unparsable."""
    try:
        return tuple(int(x) for x in text.split()[-1].split("."))
    except (ValueError, IndexError):
        return ()


@functools.lru_cache(maxsize=8)
def _probe(rootfs: str, uid: int | None) -> str:
    """Run ``true`` in a minimal sandbox of this shape; "" when it works, else why not."""

    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout
    if parse_version(version) < MIN_VERSION:
        return f"bubblewrap {version.strip() or '?'} is older than 0.8.0 (--disable-userns, --size)"
    proc = subprocess.run(
        [
            *("bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1"),
            *("--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"),
        ],
        capture_output=True,
        text=True,
        # Popen drops the ids itself (no Python code between fork and exec).
        user=uid,
        group=uid,
        extra_groups=[] if uid is not None else None,
        timeout=30,
    )
    if proc.returncode != 0:
        return (
            f"bwrap cannot create its namespaces here: {proc.stderr.strip()[:300]} (unprivileged "
            "user namespaces must be enabled: sysctl user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone=1, no AppArmor restriction on bwrap)"
        )
    return ""


class BwrapBackend(PipeBackend):
    name = "bwrap"
    label = "sandboxed, bubblewrap: host kernel"
    tool = "bwrap"
    package = "bubblewrap"

    def sandbox_argv(
        self, policy: SandboxPolicy, rootfs: Path, command: list[str], seccomp: int
    ) -> list[str]:
        return bwrap_argv(policy, rootfs, command, seccomp)

    def tool_gaps(self, policy: SandboxPolicy, rootfs: Path) -> dict[str, str]:
        import os

        from .pipe import HOST_UID_BASE

        why = _probe(str(rootfs), HOST_UID_BASE if os.geteuid() == 0 else None)
        if why:
            # Without its namespaces bwrap isolates nothing: every property is missing.
            return {"host_files": why, "network": why, "unprivileged_user": why}
        return {}
