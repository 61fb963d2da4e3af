"""firejail backend: a setuid-root sandboxing tool, chrooted into the kernel rootfs.

``firejail_argv`` is the policy in firejail's terms (pure, unit-tested):
``--chroot`` into firejail's own copy of the kernel root filesystem (needs ``chroot yes``
in /etc/firejail/firejail.config; a copy because firejail writes the host's resolv.conf
into its chroot, covered inside by ``--dns``), ``--net=none`` (loopback only), ``--private``
(tmpfs home), ``--private-tmp``, ``--private-dev``, ``/var/tmp`` read-only,
``noexec`` on every writable mount, ``--caps.drop=all``,
``--nonewprivs``, ``--seccomp`` with our deny list added to firejail's, no
further namespaces (``--restrict-namespaces``), only unix, inet and netlink
sockets (``--protocol``), 32-bit syscalls blocked, and the open-files rlimit.

What firejail cannot do here, so the preflight reports it (refusing unless
accepted): size caps on its tmpfs mounts (``tmp_size``; tmpfs pages are still
charged to the sandbox's memory cgroup). firejail has no ``--uid``: the sandbox
runs as the dedicated host user ``sandbox-kernel`` (created by setup-host),
shared by every firejail sandbox, so the per-sandbox process limit is the pids
cgroup (``pids.max = nproc_limit``), as under Docker's runc.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
from pathlib import Path

from ..image.rootfs import COMPLETE_MARK, firejail_tree
from ..policy import SandboxPolicy
from .pipe import PipeBackend
from .seccomp import DENIED, HOST_KERNEL_DENIED

SANDBOX_USER = "sandbox-kernel"
CONFIG = Path("/etc/firejail/firejail.config")


def firejail_argv(
    policy: SandboxPolicy, rootfs: Path, command: list[str], tool: str = "firejail"
) -> list[str]:
    """The firejail command line for ``command`` under ``policy``."""
    return [
        tool,
        "--quiet",
        "--noprofile",
        f"--chroot={rootfs}",
        "--net=none",
        "--dns=127.0.0.1",  # its own resolv.conf inside, over the host's it copies in
        "--private",
        "--private-tmp",
        "--private-dev",
        "--read-only=/var/tmp",
        "--noexec=/tmp",
        f"--noexec={policy.home}",
        "--noexec=/dev/shm",
        "--noexec=/var/tmp",
        "--nogroups",
        "--nosound",
        "--no3d",
        "--caps.drop=all",
        "--nonewprivs",
        f"--seccomp={','.join((*DENIED, *HOST_KERNEL_DENIED))}",
        "--seccomp.block-secondary",
        "--restrict-namespaces",
        "--protocol=unix,inet,inet6,netlink",
        "--hostname=sandbox",
        f"--rlimit-nofile={policy.nofile}",
        "--",
        *command,
    ]


def chroot_enabled(text: str) -> bool:
    """Whether firejail.config's text enables --chroot (it is off by default on Debian)."""
    return any(re.fullmatch(r"\s*chroot\s+yes\s*", line) for line in text.splitlines())


@functools.lru_cache(maxsize=1)
def _user_gap() -> str:
    try:
        pw = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        return f"no host user {SANDBOX_USER!r}: run `sudo sandbox-kernel setup-host`"
    if pw.pw_dir != "/home/sandbox" or not pw.pw_shell.endswith("/sh"):
        return (
            f"host user {SANDBOX_USER!r} needs home /home/sandbox and shell /bin/sh (firejail "
            "runs the command through it inside the chroot): run `sudo sandbox-kernel setup-host`"
        )
    return ""


class FirejailBackend(PipeBackend):
    name = "firejail"
    label = "sandboxed, firejail: host kernel"
    tool = "firejail"
    package = "firejail"
    per_sandbox_uid = False

    def sandbox_argv(
        self, policy: SandboxPolicy, rootfs: Path, command: list[str], seccomp: int
    ) -> list[str]:
        # Its own copy of the rootfs: firejail writes the host's resolv.conf into the
        # chroot at every launch (image/rootfs.py); --dns then covers it inside.
        return firejail_argv(policy, firejail_tree(rootfs), command)

    def sandbox_uid(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        pw = pwd.getpwnam(SANDBOX_USER)
        return pw.pw_uid, pw.pw_gid

    def tool_gaps(self, policy: SandboxPolicy, rootfs: Path) -> dict[str, str]:
        gaps = {
            "tmp_size": "firejail cannot cap the size of its tmpfs /tmp and home (they are "
            "charged to the memory cgroup, so memory_limit still bounds them)",
        }
        try:
            config = CONFIG.read_text()
        except OSError:
            config = ""
        if not chroot_enabled(config):
            why = f"firejail's --chroot is disabled: set `chroot yes` in {CONFIG} (setup-host does)"
            gaps.update(host_files=why)
        elif not (firejail_tree(rootfs) / COMPLETE_MARK).is_file():
            gaps["host_files"] = (
                f"no private copy of the root filesystem for firejail at {firejail_tree(rootfs)} "
                "(firejail writes the host's /etc/resolv.conf into its chroot, which must not be "
                "the tree other backends use): run `sudo sandbox-kernel image export-rootfs`"
            )
        if os.geteuid() == 0 and (why := _user_gap()):
            gaps.update(unprivileged_user=why)
        elif os.geteuid() != 0:
            gaps["unprivileged_user"] = (
                "the sandbox runs as the server's own uid (firejail has no --uid); run the server "
                "as root to use the dedicated sandbox-kernel user"
            )
        return gaps
