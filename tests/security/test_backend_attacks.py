"""The whole attack catalogue against every weaker backend (docker-runc, bwrap, firejail).

Same attacks, same providers and host-side controls as ``test_attacks.py`` (which runs
them under the default gVisor backend); the expected outcome of each (attack, backend)
comes from :data:`sandbox_kernel.security.expectations.GAPS` and is asserted both ways:
a documented gap that starts being blocked fails too, so the table stays true. Where
:data:`~sandbox_kernel.security.expectations.GAP_DETAILS` pins what a gap looks like, the
attack's observation must match it, so a further weakening behind a known gap is noticed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.security import ATTACKS, Attack
from sandbox_kernel.security.expectations import GAP_DETAILS, GAPS, expected_blocked
from tests.helpers import BACKEND_CONFIGS, Kernel
from tests.security.test_attacks import attempt

BACKENDS = list(BACKEND_CONFIGS)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def backend_kernel(backend: str, ksm: KernelSpecManager, docker_client: Any) -> Iterator[Kernel]:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=f"sandbox-{backend}", kernel_spec_manager=ksm)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kernel = Kernel(km, kc)
    try:
        kc.wait_for_ready(timeout=60)
        yield kernel
    finally:
        kernel.stop()


@pytest.fixture
def start_kernel(start_kernel: Callable[..., Kernel], backend: str) -> Callable[..., Kernel]:
    """Providers that need a kernel of their own get one of the backend under test."""

    def start(name: str | None = None, **kw: Any) -> Kernel:
        return start_kernel(name or f"sandbox-{backend}", **kw)

    return start


def test_gap_table_names_real_attacks() -> None:
    ids = {a.id for a in ATTACKS}
    for backend, gaps in GAPS.items():
        assert set(gaps) <= ids, f"{backend}: unknown attack ids {set(gaps) - ids}"
        assert all(why.strip() for why in gaps.values()), f"{backend}: every gap says why"
    assert GAPS["docker"] == {}, "the default backend has no documented gap"
    for backend, details in GAP_DETAILS.items():
        assert set(details) <= set(GAPS[backend]), f"{backend}: details of undocumented gaps"


@pytest.mark.docker
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_on_backend(
    attack: Attack, backend: str, request: pytest.FixtureRequest, backend_kernel: Kernel
) -> None:
    result = attempt(attack, request, backend_kernel)
    if expected_blocked(backend, attack.id):
        assert result["blocked"] is True, (
            f"ISOLATION GAP under backend {backend} ({attack.protects}) {attack.id}: "
            f"{attack.title}. Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"backend {backend} now blocks {attack.id}, documented as a gap "
            f"({GAPS[backend][attack.id]}): update sandbox_kernel/security/expectations.py "
            f"and docs/security.md. Observed: {result['detail']}"
        )
        pattern = GAP_DETAILS.get(backend, {}).get(attack.id)
        if pattern is not None:
            assert re.fullmatch(pattern, result["detail"]), (
                f"backend {backend}: {attack.id} sees more (or other) than its documented gap "
                f"({GAPS[backend][attack.id]}). Observed: {result['detail']}"
            )
