"""max_kernels: the per-process count of sandboxed kernels (pure, no sandbox)."""

from __future__ import annotations

import threading

import pytest

from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.kernel_slots import KernelLimitReached, KernelSlots, check_max_kernels


def test_slots_up_to_the_limit_then_a_clear_refusal() -> None:
    slots = KernelSlots()
    first, second = slots.acquire(2), slots.acquire(2)
    assert first != second and slots.in_use() == 2
    with pytest.raises(KernelLimitReached) as refused:
        slots.acquire(2)
    assert isinstance(refused.value, SandboxError)
    assert "max_kernels=2" in str(refused.value) and "Shut one down" in str(refused.value)
    assert slots.in_use() == 2, "a refusal takes nothing"
    slots.release(first)
    slots.release(first)  # twice: no effect
    slots.release(None)
    assert slots.in_use() == 1
    slots.acquire(2)
    assert slots.in_use() == 2


def test_zero_means_no_limit() -> None:
    slots = KernelSlots()
    for _ in range(50):
        slots.acquire(0)
    assert slots.in_use() == 50


@pytest.mark.parametrize("bad", [-1, 1.5, "4", True, None, 10**6])
def test_malformed_limits_are_refused(bad: object) -> None:
    with pytest.raises(PolicyError, match="max_kernels"):
        check_max_kernels(bad)
    with pytest.raises(PolicyError, match="max_kernels"):
        KernelSlots().acquire(bad)  # type: ignore[arg-type]


def test_concurrent_acquires_never_exceed_the_limit() -> None:
    slots = KernelSlots()
    won: list[int] = []
    refused: list[int] = []
    barrier = threading.Barrier(16)

    def take() -> None:
        barrier.wait()
        try:
            won.append(slots.acquire(5))
        except KernelLimitReached:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 5 and len(refused) == 11 and slots.in_use() == 5
