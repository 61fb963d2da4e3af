"""The whole attack catalogue against a kernel claimed from a sandbox restored from the runsc
backend's warm pool snapshot (root): the same attacks, providers and host-side controls as
test_attacks.py, the same expectations as the runsc backend (GAPS["runsc"]), asserted both
ways as in test_backend_attacks.py. Every kernel these tests use is checked to be a
restored one: a restored sandbox is a copy of a checkpointed process tree, run under a
bundle, cgroup and runsc flags of its own, so this is what shows it is isolated as a
fresh one is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.backends.runsc import RunscBackend
from sandbox_kernel.backends.runsc_snapshots import SNAPSHOTS
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.pool import WarmPool
from sandbox_kernel.security import ATTACKS, Attack
from sandbox_kernel.security.expectations import GAPS, expected_blocked
from tests.helpers import BACKEND_CONFIGS, Kernel, ready_kernel, variant_release
from tests.security.attempts import attempt, check_gap_detail


@pytest.fixture(scope="module")
def snapshot_ksm(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    root = tmp_path_factory.mktemp("snapshot-kernels")
    (root / "snap").mkdir()
    spec = build_kernelspec({**BACKEND_CONFIGS["runsc"], "pool_size": 1, "pool_snapshots": True})
    (root / "snap" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


def _restored(ksm: KernelSpecManager) -> Kernel:
    """A kernel whose sandbox was restored from the pool's snapshot (checked)."""
    kernel = ready_kernel(ksm, "snap")
    restored = kernel.km.provisioner.last_start_restored  # type: ignore[union-attr]
    name = str(kernel.sandbox_id)
    if not restored or not RunscBackend._sandboxes[name].restored_from:
        kernel.stop()
        pytest.fail(f"the kernel's sandbox {name} was not restored from a snapshot")
    return kernel


@pytest.fixture(scope="module")
def restored_kernel(snapshot_ksm: KernelSpecManager, docker_client: Any) -> Iterator[Kernel]:
    first = ready_kernel(snapshot_ksm, "snap")  # cold; its pool then checkpoints and restores
    try:
        kernel = _restored(snapshot_ksm)
    finally:
        first.stop()
    try:
        yield kernel
    finally:
        kernel.stop()
        WarmPool.drain_all()


@pytest.fixture
def start_kernel(snapshot_ksm: KernelSpecManager) -> Iterator[Callable[..., Kernel]]:
    """Providers that need a kernel of their own (e.g. with variables planted in the
    server's environment) get another restored one."""
    started: list[Kernel] = []

    def start(name: str | None = None, **_kw: Any) -> Kernel:
        started.append(_restored(snapshot_ksm))
        return started[-1]

    yield start
    for kernel in started:
        kernel.stop()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_on_a_restored_sandbox(
    attack: Attack, request: pytest.FixtureRequest, restored_kernel: Kernel
) -> None:
    result = attempt(attack, request, restored_kernel)
    if expected_blocked("runsc", attack.id, variant_release("runsc")):
        assert result["blocked"] is True, (
            f"ISOLATION GAP in a sandbox restored from a snapshot ({attack.protects}) "
            f"{attack.id}: {attack.title}. Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"a restored sandbox now blocks {attack.id}, documented as a runsc gap "
            f"({GAPS['runsc'][attack.id]}): update sandbox_kernel/security/expectations.py. "
            f"Observed: {result['detail']}"
        )
        check_gap_detail("runsc", attack.id, result["detail"])


def test_the_snapshot_is_the_pools_only_copy_on_disk(restored_kernel: Kernel) -> None:
    """The snapshot sits in root's private state folder (0700), nowhere a user can read."""
    record = next(iter(SNAPSHOTS.values()))
    folder = record.folder
    for d in (folder.parent.parent, folder.parent, folder):
        assert d.stat().st_uid == 0 and d.stat().st_mode & 0o077 == 0, d
    assert Path(folder, "image").is_dir()
