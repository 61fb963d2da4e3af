"""The whole attack catalogue against the runsc backend rootless: kernels started by a
Jupyter process running as a real ordinary user (``rootless`` fixture), with a cgroup
delegated to that user so that nothing is accepted as unenforced. Same attacks, providers
and host-side controls as test_attacks.py; the expected outcome is GAPS["runsc"] (gVisor's
gaps), asserted both ways as in test_backend_attacks.py, with GAP_DETAILS["runsc"] pinning
what a gap may show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox_kernel.backends.cgroups import delegate_cgroups, remove_delegation
from sandbox_kernel.security import ATTACKS, Attack
from sandbox_kernel.security.expectations import GAPS, expected_blocked
from tests.helpers import Kernel, gvisor_release
from tests.rootless import ROOTLESS_SPECS, Rootless, UserKernel
from tests.security.attempts import attempt, check_gap_detail


@pytest.fixture(scope="module")
def delegated(rootless: Rootless) -> Iterator[None]:
    delegate_cgroups(rootless.user.name, memory_bytes=8 * 2**30, cpus=2, pids=4000)
    yield
    remove_delegation(rootless.user.name)


@pytest.fixture(scope="module")
def user_kernel(rootless: Rootless, delegated: None) -> Iterator[UserKernel]:
    kernel = rootless.kernel("rl")  # the default kernelspec: refused if anything is unenforced
    try:
        yield kernel
    finally:
        kernel.stop()


@pytest.fixture
def start_kernel(rootless: Rootless, delegated: None) -> Iterator[Callable[..., Kernel]]:
    """Providers that need a kernel of their own (e.g. with variables planted in the server's
    environment) get one started by another Jupyter process of the user."""
    started: list[UserKernel] = []

    def start(name: str | None = None, **_kw: Any) -> Kernel:
        import os

        planted = {k: v for k, v in os.environ.items() if v.startswith("planted-")}
        kernel = rootless.kernel(name or "rl", **planted)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_on_rootless_runsc(
    attack: Attack, request: pytest.FixtureRequest, user_kernel: UserKernel
) -> None:
    result = attempt(attack, request, user_kernel)
    if expected_blocked(
        "runsc", attack.id, gvisor_release("runsc", ROOTLESS_SPECS["rl"].get("runtime", "runsc"))
    ):
        assert result["blocked"] is True, (
            f"ISOLATION GAP under rootless runsc ({attack.protects}) {attack.id}: "
            f"{attack.title}. Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"rootless runsc now blocks {attack.id}, documented as a gap "
            f"({GAPS['runsc'][attack.id]}): update sandbox_kernel/security/expectations.py"
        )
        check_gap_detail("runsc", attack.id, result["detail"])
