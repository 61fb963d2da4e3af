"""Every attack of :data:`sandbox_kernel.security.ATTACKS`, run inside a real sandboxed
kernel of the default backend (gVisor through Docker), each after its host-side control
(tests/security/attempts.py); the control that the user-namespace attempts work where
the privilege is real; the tmpfs caps per kernelspec.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from sandbox_kernel.security import ATTACKS, Attack, by_id, render
from sandbox_kernel.security.expectations import GAPS, expected_blocked
from tests.helpers import Kernel, gvisor_release
from tests.security.attempts import PROVIDERS, attempt, check_gap_detail


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(attack: Attack, request: pytest.FixtureRequest, shared_kernel: Kernel) -> None:
    """Blocked, unless GAPS["docker"] documents it as a gap of the runsc release the kernel
    runs on (TEST_RUNTIME's binary): then it must succeed."""
    result = attempt(attack, request, shared_kernel)
    release = gvisor_release("docker")
    if expected_blocked("docker", attack.id, release):
        assert result["blocked"] is True, (
            f"ISOLATION GAP ({attack.protects}) {attack.id}: {attack.title}. "
            f"Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"the default backend (runsc {release}) now blocks {attack.id}, documented as a "
            f"gap ({GAPS['docker'][attack.id]}): update sandbox_kernel/security/expectations.py "
            f"and docs/security.md. Observed: {result['detail']}"
        )
        check_gap_detail("docker", attack.id, result["detail"])


# The attacks whose attempts run in a clone3() user namespace, and what they must manage
# where the privilege is real: root in namespaces of its own on the host's kernel.
_PRIVILEGED_CONTROL = {
    "priv-userns-confined": ("mount': 'OK", "mknod': 'OK", "chroot': 'OK", "packet socket': 'OK",
                             "raw IPv4 socket': 'OK", "raw IPv6 socket': 'OK"),
    "net-userns-address": ("RTM_NEWADDR 192.168.213.250': 'ADDED", "SIOCSIFADDR lo:sk': 'ADDED",
                           "SIOCADDRT': 'ADDED", "RTM_NEWROUTE fd5a:213:a::': 'ADDED"),
    "net-userns-tun": ("TUNSETIFF via /dev/net/tun': \"CREATED", "raw TUNSETIFF via /tmp"),
}  # fmt: skip

# Runs an attempt as the caller (no new user namespace) instead of in a clone3() child.
_AS_CALLER = """
def _in_userns(attempt, flags=0):
    import subprocess, sys
    runner = "import json\\n" + _USERNS_NET + "\\nres = {}\\n" + attempt + "\\nprint(json.dumps(res))"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", runner], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return _json.loads(r.stdout.strip().splitlines()[-1])
"""


def _as_caller(code: str) -> str:
    """``code`` with _AS_CALLER right after the prelude's ``_in_userns``, which it replaces."""
    defs = [n for n in ast.parse(code).body if getattr(n, "name", None) == "_in_userns"]
    assert len(defs) == 1 and defs[0].end_lineno, "the attack does not use programs/_userns.py"
    lines = code.splitlines(keepends=True)
    return "".join(lines[: defs[0].end_lineno]) + _AS_CALLER + "".join(lines[defs[0].end_lineno :])


@pytest.mark.parametrize("attack_id", sorted(_PRIVILEGED_CONTROL))
def test_userns_attempts_work_where_the_privilege_is_real(attack_id: str) -> None:
    """Control for the self-contained user-namespace attacks: run by root in new network
    and mount namespaces on the host (no sandbox), every attempt succeeds, so "refused"
    inside a sandbox means refused, never a malformed request."""
    assert os.geteuid() == 0, "run the security tests as root (they create namespaces)"
    code = _as_caller(by_id(attack_id).code)
    proc = subprocess.run(
        [*("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c"),
         'ip link set lo up && exec "$0" -I -c "$1"', sys.executable, code],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is False, result["detail"]
    for expected in _PRIVILEGED_CONTROL[attack_id]:
        assert expected in result["detail"], (expected, result["detail"])


def test_tmpfs_caps_follow_the_kernelspec(
    start_kernel: Callable[..., Kernel], shared_kernel: Kernel
) -> None:
    """The size caps are the configured ones: 64m in the small kernelspec."""
    attack, cap = by_id("fs-tmpfs-caps"), 64 * 2**20
    code = render(attack, tmp_bytes=cap, home_bytes=cap)
    # Control: the default kernel's mounts are bigger, so the check can fail.
    assert shared_kernel.value(code)["blocked"] is False
    small = start_kernel("sandbox-small")
    result = small.value(code)
    assert result["blocked"] is True, result["detail"]


def test_every_attack_with_needs_has_a_provider() -> None:
    """The catalogue's own checks are in tests/unit/test_catalogue.py; this one is about the
    providers above."""
    assert {a.id for a in ATTACKS if a.needs} == set(PROVIDERS), "and only those"
