"""What each backend is documented NOT to block: the one table the tests and docs follow.

``tests/security/test_backend_attacks.py`` runs every attack of the catalogue against
every backend and asserts this table both ways: an attack listed here must succeed
(a gap that starts being blocked fails the test, so the table is corrected), every
other attack must be blocked. ``docs/security.md`` embeds :func:`markdown_table`
(checked by a test). The default backend (docker = gVisor) has no gaps.
"""

from __future__ import annotations

from .attacks import ATTACKS

BACKEND_ORDER = ("docker", "docker-runc", "bwrap", "firejail")

_SHARED_KERNEL = "the sandbox runs on the host's Linux kernel (no gVisor): it reads the "
_MOUNT_SOURCE = (
    "the mount table shows the bind mount's source, the host path of the kernel root "
    "filesystem (/var/lib/sandbox-kernel/rootfs/...); no other host path"
)

# backend -> {attack id: why this backend does not block it}. Observed by the attack suite
# (tests/security/test_backend_attacks.py), which fails if any entry stops being true.
GAPS: dict[str, dict[str, str]] = {
    "docker": {},
    "docker-runc": {
        "fs-mountinfo": "runc's overlay root names Docker's storage paths "
        "(/var/lib/docker/overlay2/...) in the mount table",
        "priv-kernel-attack-surface": "io_uring is allowed: the shared seccomp profile was "
        "written for gVisor, which does not implement it (bwrap and firejail deny it)",
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
    },
    "bwrap": {
        "fs-mountinfo": _MOUNT_SOURCE,
        "fs-noexec-tmpfs": "bubblewrap cannot mount its tmpfs noexec: code written to /tmp, "
        "home or /dev/shm can be executed (it could be run by the interpreter anyway)",
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
    },
    "firejail": {
        "fs-mountinfo": _MOUNT_SOURCE,
        "fs-symlink-escape": "the kernel's uid (host user sandbox-kernel) has no entry in "
        "firejail's generated /etc/passwd, so the check cannot recognise the sandbox's own "
        "passwd through the links (they do resolve inside the chroot)",
        "fs-write-outside-tmpfs": "firejail mounts a private, writable tmpfs on /var/tmp "
        "(not the rootfs; gone with the sandbox; bounded only by the memory cgroup)",
        "fs-tmpfs-caps": "firejail cannot cap its tmpfs sizes (accept_unenforced=['tmp_size']); "
        "they are bounded by the memory cgroup",
        "fs-noexec-tmpfs": "firejail's private /tmp and /dev/shm are not mounted noexec",
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
        "info-process-list": "firejail's own processes share the sandbox's pid namespace (its "
        "init and the /bin/sh it starts the agent with); no host process is visible",
    },
}


def expected_blocked(backend: str, attack_id: str) -> bool:
    return attack_id not in GAPS[backend]


def markdown_table() -> str:
    """Per attack: blocked / NOT blocked (and why) for each backend."""
    head = "| attack | " + " | ".join(BACKEND_ORDER) + " |"
    rule = "|---" * (len(BACKEND_ORDER) + 1) + "|"
    rows = [head, rule]
    for attack in ATTACKS:
        cells = []
        for backend in BACKEND_ORDER:
            why = GAPS[backend].get(attack.id)
            cells.append("blocked" if why is None else f"**NOT blocked**: {why}")
        rows.append(f"| `{attack.id}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
