"""What each backend is documented NOT to block: the one table the tests and docs follow.

``tests/security/test_backend_attacks.py`` runs every attack of the catalogue against
every backend and asserts this table both ways: an attack listed here must succeed
(a gap that starts being blocked fails the test, so the table is corrected), every
other attack must be blocked. ``docs/security.md`` embeds :func:`markdown_table`
(checked by a test). The default backend (docker = gVisor) is held to the same table
(``tests/security/test_attacks.py``); the runsc backend (gVisor without Docker) has
exactly the docker backend's gaps, which are gVisor's and depend on the runsc release
(:data:`CLOSED_IN`, :func:`gaps_of`): each test holds a kernel to the release it runs on.
"""

from __future__ import annotations

from .attacks import ATTACKS

BACKEND_ORDER = ("docker", "runsc", "kubernetes", "docker-runc", "bwrap", "firejail")

_SHARED_KERNEL = "the sandbox runs on the host's Linux kernel (no gVisor): it reads the "
_MOUNT_SOURCE = (
    "the mount table shows the bind mount's source, the host path of the kernel root "
    "filesystem (/var/lib/sandbox-kernel/rootfs/...); no other host path"
)

_IN_MEMORY = (
    "noexec covers files on those mounts only: an ELF written to a memfd runs (execve of "
    "/proc/<pid>/fd/N), and so does code in anonymous executable memory (which ctypes callbacks "
    "and JIT compilers need); the kernel can issue any syscall the filter allows through ctypes "
    "anyway, so noexec is defence in depth, not a barrier to running native code"
)

_AGENT_PROC = (
    "gVisor (runsc 20240729) makes /proc/<pid>/environ, auxv, maps and smaps readable by "
    "every uid (mode 0444, no ptrace check; fixed upstream in release-20251215.0) and lists "
    "/proc/<pid>/fd to anyone, whatever PR_SET_DUMPABLE says (the agent sets it; nothing "
    "else within the agent's reach hides them). The kernel reads of its root agent: the "
    "environment (HOME, LANG, PATH: each also in the kernel's own; Docker's HOSTNAME, the "
    "sandbox's host name, which the kernel's environment no longer has; the key reaches the "
    "agent over the pipe, never through its environment), the memory layout "
    "and auxiliary vector (addresses in the same interpreter and libraries the kernel runs, "
    "which would help only an exploit of a memory bug in the agent) and the descriptor "
    "numbers. Its memory (mem: EACCES) and every descriptor but /dev/null stay closed "
    "(EACCES; sockets ENXIO)"
)

# backend -> {attack id: why this backend does not block it}. Observed by the attack suite
# (tests/security/test_attacks.py for docker, test_backend_attacks.py for the others), which
# fails if any entry stops being true.
GAPS: dict[str, dict[str, str]] = {
    "docker": {
        "fs-noexec-loader": "gVisor (runsc 20240729) applies noexec to execve only, not to "
        "executable mappings: a copy of a binary in /tmp, home or /dev/shm, even with mode 0644, "
        "runs when started through the dynamic loader (ld.so maps it); no flag of this runsc "
        "release, mount option or syscall rule refuses that without refusing every shared "
        "library",
        "fs-noexec-memory": _IN_MEMORY,
        "net-userns-address": "a user namespace made with a raw clone3() (seccomp cannot read "
        "clone3's flags, and this runsc ignores errnoRet, so clone3 cannot be answered ENOSYS "
        "without breaking threads) gets CAP_NET_ADMIN over the sandbox's own network namespace "
        "in gVisor: it can add addresses and routes to lo over netlink (SIOCSIFADDR and "
        "SIOCADDRT are not implemented). They exist only in the sandbox's own network stack, "
        "which has no interface but lo: nothing outside is reached (net-userns-egress)",
        "info-agent-proc": _AGENT_PROC,
    },
    "docker-runc": {
        "fs-mountinfo": "runc's overlay root names Docker's storage paths "
        "(/var/lib/docker/overlay2/...) in the mount table",
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
        "fs-noexec-memory": _IN_MEMORY,
    },
    "bwrap": {
        "fs-mountinfo": _MOUNT_SOURCE,
        "fs-noexec-tmpfs": "bubblewrap cannot mount its tmpfs noexec: code written to /tmp, "
        "home or /dev/shm can be executed (it could be run by the interpreter anyway)",
        "fs-noexec-loader": "bubblewrap cannot mount its tmpfs noexec: a binary in /tmp, home "
        "or /dev/shm can be mapped executable and run through the dynamic loader",
        "fs-noexec-memory": _IN_MEMORY,
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
    },
    "firejail": {
        "fs-mountinfo": _MOUNT_SOURCE,
        "fs-symlink-escape": "the kernel's uid (host user sandbox-kernel) has no entry in "
        "firejail's generated /etc/passwd, so the check cannot recognise the sandbox's own "
        "passwd through the links (they do resolve inside the chroot)",
        "fs-tmpfs-caps": "firejail cannot cap its tmpfs sizes (accept_unenforced=['tmp_size']); "
        "they are bounded by the memory cgroup",
        "info-kernel-release": _SHARED_KERNEL + "host's kernel release",
        "info-host-identifiers": _SHARED_KERNEL + "host's boot id and kernel command line",
        "info-process-list": "firejail's own processes share the sandbox's pid namespace (its "
        "init and the /bin/sh it starts the agent with); no host process is visible",
        "priv-agent-signal": "the agent is neither PID 1 of the sandbox (firejail's init is) "
        "nor under a uid of its own (firejail has no --uid), so the kernel can stop it with "
        "SIGSTOP: that stalls only its own sandbox, and the host's bounds hold whatever the "
        "sandbox sends (docs/security.md)",
        "fs-noexec-memory": _IN_MEMORY,
        "fs-root-read-only": "firejail mounts its chroot, its own root-owned copy of the "
        "kernel root filesystem (one per image, shared by its firejail sandboxes), read-write: "
        "that nothing there is written rests on permissions, the sandbox's uid owns none of "
        "it (fs-write-outside-tmpfs)",
        "fs-mount-census": "firejail binds its own helper folder of the host "
        "(/usr/lib/<arch>/firejail) read-only at /run/firejail/lib (it cannot run without "
        "it); its tmpfs mounts have no size cap (/tmp, the home, /dev/shm, /run/lock; "
        "accept_unenforced=['tmp_size']); /run/firejail/mnt and /var/log hold its own files. "
        "No other host folder is mounted",
    },
}

# backend -> {attack id: regular expression its detail must match in full}: for gaps that
# could hide a further weakening of the same attack (one more host mount would not turn a
# "not blocked" into anything else), what the attack sees is pinned down as well.
# What gVisor shows of /proc/1 and /proc/1/task/1: nothing opened but /dev/null (fds 0-2),
# the memory refused, environ holding only variables the kernel has itself.
_AGENT_FILES = (
    r"environ read \(\d+ variables, (all in the kernel's own|not in the kernel's own: "
    r"\['HOSTNAME'\])\), auxv read \(\d+ bytes\), "
    r"smaps read \(\d+ lines\), maps read \(\d+ lines\), mem EACCES, fd read \(\d+ entries\), "
    r"(fd/\d+ opened \(/dev/null\), )*fd/\* EACCES \(\d+\)(, fd/\* ENODEV \(\d+\))?"
    r"(, fd/\* ENXIO \(\d+\))?"
)
_UNSIZED = r": writable tmpfs without a size cap \([^;]*\)"
_FILES = r": tmpfs the sandbox cannot write, holding files \([^;]*\)"
GAP_DETAILS: dict[str, dict[str, str]] = {
    "docker": {"info-agent-proc": f"/proc/1: {_AGENT_FILES}; /proc/1/task/1: {_AGENT_FILES}"},
    "firejail": {
        "fs-mount-census": "mounts not from the image or the sandbox: "
        + "; ".join(
            (
                "/dev/shm" + _UNSIZED,
                "/dev" + _UNSIZED,
                "/home" + _UNSIZED,
                r"/run/firejail/lib: \S+ mount of /usr/lib/[^/; ]+/firejail",
                "/run/firejail/mnt" + _FILES,
                "/run/lock" + _UNSIZED,
                "/tmp" + _UNSIZED,
                "/var/log" + _FILES,
            )
        ),
    },
}
# gVisor without Docker (the runsc backend, as root and rootless): the same gVisor, so the
# same gaps (tests/security/test_backend_attacks.py, test_runsc_rootless_attacks.py).
GAPS["runsc"] = dict(GAPS["docker"])
GAP_DETAILS["runsc"] = dict(GAP_DETAILS["docker"])


# gVisor's gaps a later runsc closes: attack id -> the runsc release (the date in `runsc
# --version`) seen blocking it: setup-host's current build (host/runsc_current.env; the
# attack suite on runsc-current, docs/backends.md). Older releases are held to the gap, so
# a release in between that closes it fails the suite until this table says so.
GVISOR_BACKENDS = ("docker", "runsc", "kubernetes")
CLOSED_IN: dict[str, int] = {
    "fs-noexec-loader": 20260905,  # ld.so: "failed to map segment"; mmap(PROT_EXEC) EPERM
    "net-userns-address": 20260905,  # RTM_NEWADDR/RTM_NEWROUTE EPERM in the clone3 namespace
    "info-agent-proc": 20260905,  # /proc/1's environ, auxv, maps, smaps, fd: EACCES
}


# The kubernetes backend's pods run the gVisor of their node, whose release the Jupyter
# server cannot learn (no API names it; gVisor's kernel reports a fixed Linux version).
# Its gaps are gVisor's, of the node's release where that is known (the tests know the
# dev cluster's); without it, of any release, and those a later release closes may be
# blocked or not: doctor reports them as seen (undecided). Its column in docs/security.md
# says, like docker's, up to which release a gap holds.
RELEASE_UNKNOWN = ("kubernetes",)
# What the pod spec adds to gVisor's gaps, seen by the whole catalogue in a pod of the dev
# cluster (tests/security/test_backend_attacks.py with KUBECONFIG set): the memory
# emptyDirs are the node's folders served into the sandbox by gVisor's gofer (9p), not a
# tmpfs of the sandbox's own, and a pod spec has no mount options (noexec) and no way to
# cover /dev/net. To fix (docs/kubernetes.md, Open): gVisor's mount hints for tmpfs.
_POD_VOLUMES = (
    "a pod's memory emptyDirs (/tmp, the home) are the node's emptyDir folders served into "
    "the sandbox by gVisor's gofer (9p), not a tmpfs of the sandbox's own"
)
GAPS["kubernetes"] = {
    **GAPS["docker"],
    "fs-mount-census": _POD_VOLUMES + "; the kubelet's /dev/termination-log is bound the same "
    "way; /dev/shm is gVisor's tmpfs without a size cap (bounded by the pod's memory limit)",
    "fs-tmpfs-caps": _POD_VOLUMES + ": their size is the emptyDir's sizeLimit on the node "
    "(the kubelet's), not a tmpfs cap inside the sandbox",
    "fs-noexec-tmpfs": "a pod spec sets no mount options: /tmp, the home and /dev/shm are not "
    "noexec (code there could be run by the interpreter anyway)",
    "fs-noexec-loader": "a pod spec sets no mount options: with no noexec mount, a binary in "
    "/tmp, the home or /dev/shm runs through the dynamic loader under any gVisor release",
    "net-interface-config": "gVisor's /dev/net/tun opens (a pod spec cannot cover /dev/net as "
    "the Docker backend's empty tmpfs does); making a device (TUNSETIFF) and configuring an "
    "interface (RTM_NEWADDR) stay refused (EPERM), and the pod has no network to reach",
}
GAP_DETAILS["kubernetes"] = {
    **GAP_DETAILS["docker"],
    "fs-mount-census": r"mounts not from the image or the sandbox: /dev/shm: writable tmpfs "
    r"without a size cap \(/dev/shm\); /dev/termination-log: 9p mount of /; /home/sandbox: 9p "
    r"mount of /; /tmp: 9p mount of /",
    "net-interface-config": r"\{'open /dev/net/tun': 'OPENED', 'TUNSETIFF': 'EPERM', "
    r"'RTM_NEWADDR': 'EPERM'\}",
}
# Gaps of a backend that no gVisor release closes there (CLOSED_IN does not apply).
UNCONDITIONAL: dict[str, frozenset[str]] = {"kubernetes": frozenset({"fs-noexec-loader"})}


def undecided(backend: str) -> frozenset[str]:
    """The attacks whose outcome under ``backend`` depends on a gVisor release it cannot
    know (either outcome is as documented)."""
    if backend not in RELEASE_UNKNOWN:
        return frozenset()
    return frozenset(CLOSED_IN) - UNCONDITIONAL.get(backend, frozenset())


def gaps_of(backend: str, release: int | None = None) -> dict[str, str]:
    """The attacks ``backend`` does not block (and why). Under gVisor (``docker``,
    ``runsc``, ``kubernetes``) they depend on the runsc ``release`` the sandbox runs on
    (:func:`sandbox_kernel.backends.gvisor.release_of`), which is then required, except
    where the backend cannot know it (RELEASE_UNKNOWN: every release's gaps)."""
    gaps = GAPS[backend]
    if backend not in GVISOR_BACKENDS or (release is None and backend in RELEASE_UNKNOWN):
        return dict(gaps)
    if release is None:
        raise ValueError(f"{backend}: the gaps depend on the runsc release; name it")
    always = UNCONDITIONAL.get(backend, frozenset())
    return {
        a: why
        for a, why in gaps.items()
        if a not in CLOSED_IN or release < CLOSED_IN[a] or a in always
    }


def expected_blocked(backend: str, attack_id: str, release: int | None = None) -> bool:
    return attack_id not in gaps_of(backend, release)


TABLE_START = "<!-- backend-gaps:start (generated by sandbox_kernel.security.expectations) -->"
TABLE_END = "<!-- backend-gaps:end -->"


def markdown_table() -> str:
    """The attacks some backend does not block (and why; under gVisor, up to which runsc
    release), then one row for all the others."""
    head = "| attack | " + " | ".join(f"`{b}`" for b in BACKEND_ORDER) + " |"
    rows = [head, "|---" * (len(BACKEND_ORDER) + 1) + "|"]
    others = 0
    for attack in ATTACKS:
        if not any(attack.id in GAPS[b] for b in BACKEND_ORDER):
            others += 1
            continue
        cells = []
        for backend in BACKEND_ORDER:
            why = GAPS[backend].get(attack.id)
            always = attack.id in UNCONDITIONAL.get(backend, frozenset())
            closed = CLOSED_IN.get(attack.id) if backend in GVISOR_BACKENDS and not always else None
            if why is None:
                cells.append("blocked")
            elif closed is None:
                cells.append(f"**not blocked**: {why}")
            else:
                cells.append(
                    f"runsc {closed} and later: blocked; older runsc: **not blocked**: {why}"
                )
        rows.append(f"| `{attack.id}` | " + " | ".join(cells) + " |")
    every = " | ".join("blocked" for _ in BACKEND_ORDER)
    rows.append(f"| the other {others} attacks of the catalogue | {every} |")
    return "\n".join([TABLE_START, *rows, TABLE_END]) + "\n"
