"""The whole attack catalogue against every other backend (runsc, its ptrace platform,
docker-runc, bwrap, firejail).

Same attacks, providers and host-side controls (``attempts.py``) as ``test_attacks.py``
(which runs them under the default gVisor backend); the expected outcome of each (attack, backend)
comes from :data:`sandbox_kernel.security.expectations.GAPS` and is asserted both ways:
a documented gap that starts being blocked fails too, so the table stays true. Where
:data:`~sandbox_kernel.security.expectations.GAP_DETAILS` pins what a gap looks like, the
attack's observation must match it, so a further weakening behind a known gap is noticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.security import ATTACKS, Attack
from sandbox_kernel.security.expectations import GAPS, GVISOR_BACKENDS, expected_blocked
from tests.helpers import BACKEND_CONFIGS, Kernel, backend_of, running_kernel, variant_release
from tests.security.attempts import attempt, check_gap_detail

BACKENDS = list(BACKEND_CONFIGS)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def backend_kernel(backend: str, ksm: KernelSpecManager, docker_client: Any) -> Iterator[Kernel]:
    with running_kernel(ksm, f"sandbox-{backend}") as kernel:
        yield kernel


@pytest.fixture
def start_kernel(start_kernel: Callable[..., Kernel], backend: str) -> Callable[..., Kernel]:
    """Providers that need a kernel of their own get one of the backend under test."""

    def start(name: str | None = None, **kw: Any) -> Kernel:
        return start_kernel(name or f"sandbox-{backend}", **kw)

    return start


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_on_backend(
    attack: Attack, backend: str, request: pytest.FixtureRequest, backend_kernel: Kernel
) -> None:
    result = attempt(attack, request, backend_kernel)
    gaps = backend_of(backend)  # a variant (runsc-ptrace) has its backend's gaps
    if expected_blocked(gaps, attack.id, variant_release(backend)):
        assert result["blocked"] is True, (
            f"ISOLATION GAP under backend {backend} ({attack.protects}) {attack.id}: "
            f"{attack.title}. Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"backend {backend} now blocks {attack.id}, documented as a gap "
            f"({GAPS[gaps][attack.id]}): update sandbox_kernel/security/expectations.py "
            f"and docs/security.md. Observed: {result['detail']}"
        )
        check_gap_detail(gaps, attack.id, result["detail"])


# A raw clone3() in a fresh, single-threaded child of the kernel: struct clone_args (88
# bytes) with only the flags and SIGCHLD as exit signal; syscall 435 on every architecture.
_CLONE3 = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, flags in (("no flags", 0), ("CLONE_NEWUSER", 0x10000000),
                    ("CLONE_NEWUSER|CLONE_NEWNET", 0x10000000 | 0x40000000)):
    args = (ctypes.c_uint64 * 11)()
    args[0], args[4] = flags, 17
    ctypes.set_errno(0)
    pid = libc.syscall(ctypes.c_long(435), ctypes.byref(args), ctypes.c_long(88))
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        out[name] = "OK"
    else:
        out[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps(out))
"""


def test_clone3_is_answered_enosys(backend: str, backend_kernel: Kernel) -> None:
    """On the host's kernel, ``clone3`` must fail with ENOSYS, exactly: seccomp cannot read
    clone3's flags (they are in memory), so the filter answers every clone3 with ENOSYS and
    libc falls back to ``clone``, whose namespace flags the filter refuses. docker-runc and
    bwrap get that rule from our profile (``seccomp.ENOSYS_SYSCALLS``), firejail from its
    own default filter.

    Why the exact errno: without the rule, docker-runc lets clone3(CLONE_NEWUSER) succeed
    (the host kernel allows unprivileged user namespaces and our profile replaces Docker's
    default one), and priv-userns-confined did not notice, because what it tries inside
    the namespace (mount, mknod, chroot, packet sockets) is refused by the deny list anyway;
    yet such a namespace, with CLONE_NEWNET, holds CAP_NET_ADMIN over a network namespace
    of its own on the host's kernel. Under bwrap, --disable-userns refuses it as well
    (ENOSPC): there the rule is the second lock, and only its exact answer shows it is on.
    """
    code = (
        "import json, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-I', '-c', {_CLONE3!r}],\n"
        "                   capture_output=True, text=True, timeout=60)\n"
        "print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "
        "json.dumps({'no output': r.stderr[-500:]}))\n"
    )
    seen = backend_kernel.value(code)
    if backend_of(backend) in GVISOR_BACKENDS:
        # gVisor (runsc, or docker on runsc): runsc ignores errnoRet, so clone3 cannot be answered ENOSYS without
        # breaking threads; it stays allowed, as under the docker backend, and what its user
        # namespace can do is the catalogue's (priv-userns-*, net-userns-*; gap table).
        assert seen == dict.fromkeys(
            ("no flags", "CLONE_NEWUSER", "CLONE_NEWUSER|CLONE_NEWNET"), "OK"
        ), seen
        return
    expected = dict.fromkeys(("no flags", "CLONE_NEWUSER", "CLONE_NEWUSER|CLONE_NEWNET"), "ENOSYS")
    assert seen == expected, (
        f"backend {backend}: clone3 is not answered ENOSYS (the seccomp rule of "
        f"ENOSYS_SYSCALLS is missing or changed): {seen}"
    )
