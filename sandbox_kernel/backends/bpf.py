"""Compile the sandbox's seccomp profile into a BPF program with libseccomp (ctypes).

Called by host-kernel backends (bubblewrap, firejail) that take a compiled
filter. The rules are those of :mod:`.seccomp` (the profile Docker applies),
plus what only matters when the sandbox shares the host's kernel: io_uring, and
``clone3`` answered with ENOSYS so that libc falls back to ``clone``, whose
namespace flags the filter can inspect (Docker's default profile does the same).
Syscalls of foreign architectures (i386, x32) kill the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

from ..errors import SandboxError
from .seccomp import (
    AF_PACKET,
    CLONE_NAMESPACE_FLAGS,
    DENIED,
    DENIED_IOCTLS,
    DEVICE_TYPES,
    ENOSYS_SYSCALLS,
    HOST_KERNEL_DENIED,
    IOCTL_REQUEST_MASK,
    RAW_INET_FAMILIES,
    S_IFMT,
    SOCK_RAW,
    SOCK_TYPE_MASK,
)

_ACT_ALLOW = 0x7FFF0000
_CMP_EQ, _CMP_MASKED_EQ = 4, 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise SandboxError(
            "libseccomp is missing: the seccomp filter cannot be built. "
            "Install it: apt-get install libseccomp2"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


@functools.lru_cache(maxsize=1)
def seccomp_bpf() -> bytes:
    """The compiled filter (raw ``struct sock_filter`` array), as bwrap --seccomp takes it."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SandboxError("libseccomp: seccomp_init failed")
    try:

        def rule(action: int, name: str, *args: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return  # not a syscall on this architecture
            cmps = (_ArgCmp * max(1, len(args)))(*[_ArgCmp(*a) for a in args])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
            if rc < 0:
                raise SandboxError(
                    f"libseccomp: cannot add the rule for {name}: {os.strerror(-rc)}"
                )

        deny = _act_errno(errno.EPERM)
        for name in (*DENIED, *HOST_KERNEL_DENIED):
            rule(deny, name)
        for name in ENOSYS_SYSCALLS:
            rule(_act_errno(errno.ENOSYS), name)
        for flag in CLONE_NAMESPACE_FLAGS.values():
            rule(deny, "clone", (0, _CMP_MASKED_EQ, flag, flag))
        rule(deny, "socket", (0, _CMP_EQ, AF_PACKET, 0))
        for family in RAW_INET_FAMILIES.values():
            raw = (1, _CMP_MASKED_EQ, SOCK_TYPE_MASK, SOCK_RAW)
            rule(deny, "socket", (0, _CMP_EQ, family, 0), raw)
        for request in DENIED_IOCTLS.values():
            rule(deny, "ioctl", (1, _CMP_MASKED_EQ, IOCTL_REQUEST_MASK, request))
        for kind in DEVICE_TYPES.values():
            rule(deny, "mknod", (1, _CMP_MASKED_EQ, S_IFMT, kind))
            rule(deny, "mknodat", (2, _CMP_MASKED_EQ, S_IFMT, kind))
        fd = os.memfd_create("sandbox-seccomp")
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SandboxError(f"libseccomp: cannot export the filter: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def seccomp_fd() -> int:
    """A fresh memfd holding the filter at offset 0, for a child to inherit and read."""
    fd = os.memfd_create("sandbox-seccomp")
    os.write(fd, seccomp_bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
