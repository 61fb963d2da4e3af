"""Kernels on the local test backend for the unit tier: kernelspecs, a started kernel,
and what must be gone afterwards (processes, ports, folders, slots, pooled sandboxes)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.kernel_slots import SLOTS
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.pool import WarmPool
from sandbox_kernel.provisioner import SandboxProvisioner
from tests.fakes.local_backend import NAME, LocalBackend, LocalSandbox, marked_processes
from tests.helpers import Kernel, listening_ports, tcp_listeners

# The kernel command of the tests' kernelspecs: this interpreter (it has ipykernel), as
# the image's python3 would be inside a sandbox.
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
TIMEOUT = 60.0


def write_spec(folder: Path, name: str, config: dict[str, Any], **overrides: Any) -> None:
    """A kernelspec ``name`` in ``folder`` on the local backend, built and validated like
    ``sandbox-kernel install`` does; ``pool_size`` 0 unless ``config`` says otherwise."""
    spec = build_kernelspec({"backend": NAME, "pool_size": 0, **config})
    spec["argv"] = list(KERNEL_ARGV)
    spec.update(overrides)
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / "kernel.json").write_text(json.dumps(spec))


def provisioner(km: KernelManager) -> SandboxProvisioner:
    prov = km.provisioner
    assert isinstance(prov, SandboxProvisioner), prov
    return prov


def sandbox_of(km: KernelManager) -> LocalSandbox:
    """The running local sandbox of ``km``'s kernel."""
    sandbox = LocalBackend.sandboxes.get(str(provisioner(km).sandbox_id))
    assert sandbox is not None, f"no local sandbox {provisioner(km).sandbox_id}"
    return sandbox


def start(ksm: KernelSpecManager, name: str, **kwargs: Any) -> Kernel:
    """A started kernel with a blocking client, ready."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel(**kwargs)
    kc = km.client()
    kc.start_channels()
    kernel = Kernel(km, kc)
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
    except BaseException:
        kernel.stop()
        raise
    return kernel


def wait_until(cond: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pool_ready(policy: object) -> bool:
    return any(p.ready for p in list(WarmPool._pools.values()) if p.policy == policy)


def kernel_ports_listening(sandbox: LocalSandbox) -> set[int]:
    """Which of the sandbox's kernel ports something listens on."""
    ports = set(sandbox.ports.values())
    return {port for _addr, port, _inode in tcp_listeners() if port in ports}


class Leftovers:
    """What exists before a test, to check that nothing of it is left after."""

    def __init__(self) -> None:
        self.ports = set(listening_ports(own_only=True))
        self.created = set(LocalBackend.created)
        self.slots = SLOTS.in_use()

    def check(self) -> None:
        WarmPool.drain_all()
        mine = [n for n in LocalBackend.created if n not in self.created]
        live = [n for n in mine if n in LocalBackend.sandboxes]
        assert not live, f"local sandboxes not removed: {live}"
        # Processes end when their sandbox is removed; reaping may lag a moment.
        wait_until(lambda: not marked_processes(mine), "the sandboxes' processes to end", 10)
        folders = [str(LocalBackend.created[n]) for n in mine if LocalBackend.created[n].exists()]
        assert not folders, f"sandbox folders left: {folders}"
        new_ports = set(listening_ports(own_only=True)) - self.ports
        assert not new_ports, f"ports left listening: {new_ports}"
        assert SLOTS.in_use() == self.slots, "a max_kernels slot was not given back"
