"""The seccomp profile applied inside every sandbox (pure data).

gVisor already stands between the kernel and the host's syscalls; this profile
closes gaps in gVisor's own permission checks that the attack suite found in
runsc 20240729, where an unprivileged user could still:

* create user namespaces (and hold every capability inside them),
* clone into new mount namespaces without CAP_SYS_ADMIN,
* mknod character and block devices (tmpfs ``nodev`` is not enforced),
* open packet sockets, and raw IPv4/IPv6 sockets, inside such a user namespace,
* create a TUN/TAP interface inside such a user namespace (``TUNSETIFF``; the
  Docker backend also hides gVisor's ``/dev/net/tun``),

plus syscalls a notebook never needs that widen the surface (mounting,
keyrings, BPF, module loading, ptrace of other processes...). Anything not
listed is allowed: gVisor implements it without host privileges.

runsc enforces an OCI seccomp profile only with ``--oci-seccomp``, which the
host setup adds and the Docker backend's preflight insists on.

Known limit: this runsc ignores ``errnoRet`` (every denial is EPERM), so the usual
trick of answering ``clone3`` with ENOSYS (making libc fall back to the inspectable
``clone``) would break every thread. ``clone3`` stays allowed, and a program that
issues it directly can still enter a new user namespace; what that grants stays
inside gVisor's kernel (see docs/security.md and the attack suite): among it,
adding addresses and routes to the sandbox's own network namespace over netlink,
which no syscall rule can tell from the interface listing every process needs.
"""

from __future__ import annotations

import json
from typing import Any

EPERM = 1

# Syscalls that fail with EPERM whatever their arguments.
DENIED = (
    "acct", "add_key", "bpf", "chroot", "delete_module", "fanotify_init", "finit_module",
    "init_module", "iopl", "ioperm", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mount", "move_mount", "name_to_handle_at", "open_by_handle_at",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "quotactl", "reboot", "request_key",
    "setns", "swapoff", "swapon", "syslog", "umount2", "unshare", "userfaultfd", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)  # fmt: skip

# Only when the sandbox runs on the host's kernel (docker-runc, bwrap, firejail): io_uring,
# a large interface with a record of privilege escalations that gVisor does not offer
# anyway, and clone3 answered with ENOSYS so that libc falls back to clone, whose
# namespace flags the rules below can inspect (runc and libseccomp honour the errno).
HOST_KERNEL_DENIED = ("io_uring_setup", "io_uring_enter", "io_uring_register")
ENOSYS_SYSCALLS = ("clone3",)
ENOSYS = 38

# clone(2) flags that create namespaces; each one present in flags (arg 0) is refused.
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# Packet sockets: never needed by a notebook; refused even to a process holding
# CAP_NET_RAW inside a user namespace of its own (which gVisor would honour).
AF_PACKET = 17
# Raw IPv4/IPv6 sockets, for the same reason. The rule matches the family AND the type:
# a rule on the type alone (SOCK_RAW) also refuses netlink sockets, which getifaddrs()
# opens as SOCK_RAW (seen: ZeroMQ's resolver aborting). The type argument may carry
# SOCK_NONBLOCK and SOCK_CLOEXEC: only its low bits are compared.
RAW_INET_FAMILIES = {"AF_INET": 2, "AF_INET6": 10}
SOCK_RAW, SOCK_TYPE_MASK = 3, 0xF

# ioctl requests that create or attach network interfaces: refused whoever asks (a process
# holding CAP_NET_ADMIN in a user namespace of its own, which gVisor would honour). The
# kernel (Linux and gVisor) reads the request as 32 bits: the rule masks off the upper
# half, so a raw syscall with junk in it is refused too.
IOCTL_REQUEST_MASK = 0xFFFFFFFF
DENIED_IOCTLS = {"TUNSETIFF": 0x400454CA}

S_IFMT = 0o170000
DEVICE_TYPES = {"S_IFCHR": 0o020000, "S_IFBLK": 0o060000}


def _masked(index: int, mask: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _deny(names: list[str], *args: dict[str, Any]) -> dict[str, Any]:
    """EPERM for ``names`` (when every condition in ``args`` holds)."""
    rule: dict[str, Any] = {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    if args:
        rule["args"] = list(args)
    return rule


def seccomp_profile(host_kernel: bool = False) -> dict[str, Any]:
    """A Docker seccomp profile (JSON-able): allow by default, deny the list above.
    ``host_kernel`` (runc): also the rules of HOST_KERNEL_DENIED and ENOSYS_SYSCALLS."""
    rules = [_deny(list(DENIED))]
    if host_kernel:
        rules.append(_deny(list(HOST_KERNEL_DENIED)))
        rules.append({**_deny(list(ENOSYS_SYSCALLS)), "errnoRet": ENOSYS})
    rules += [_deny(["clone"], _masked(0, flag, flag)) for flag in CLONE_NAMESPACE_FLAGS.values()]
    af_packet = {"index": 0, "value": AF_PACKET, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
    rules.append(_deny(["socket"], af_packet))
    for family in RAW_INET_FAMILIES.values():
        same_family = {"index": 0, "value": family, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
        rules.append(_deny(["socket"], same_family, _masked(1, SOCK_TYPE_MASK, SOCK_RAW)))
    for request in DENIED_IOCTLS.values():
        rules.append(_deny(["ioctl"], _masked(1, IOCTL_REQUEST_MASK, request)))
    for kind in DEVICE_TYPES.values():
        rules.append(_deny(["mknod"], _masked(1, S_IFMT, kind)))
        rules.append(_deny(["mknodat"], _masked(2, S_IFMT, kind)))
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [
            "SCMP_ARCH_X86_64",
            "SCMP_ARCH_X86",
            "SCMP_ARCH_X32",
            "SCMP_ARCH_AARCH64",
        ],
        "syscalls": rules,
    }


def seccomp_security_opt(host_kernel: bool = False) -> str:
    """The profile as Docker's API takes it: ``seccomp=<json>``."""
    return "seccomp=" + json.dumps(seccomp_profile(host_kernel), separators=(",", ":"))
