"""A burst of kernels on the runsc backend (root): restored from the warm pool's snapshot,
or started afresh (pool_snapshots off), side by side.

    sudo .venv/bin/python benchmarks/restore_burst.py [--n 10] [--platform systrap|ptrace]

For each mode: one kernel first (cold; the pool then fills, and with snapshots makes its
snapshot), then ``--n`` kernels requested at once through ``AsyncKernelManager``, each
waited for until it answers ``kernel_info``. Prints one JSON object per mode: seconds from
the request to the first and the last answering kernel, how many were restored, the
snapshot's size, and the load average before and after (this is a shared machine: read the
load with the times). A benchmark, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox_kernel.backends.runsc_snapshots import SNAPSHOTS  # noqa: E402
from sandbox_kernel.kernelspec import build_kernelspec  # noqa: E402
from sandbox_kernel.pool import WarmPool  # noqa: E402


def _kernelspecs(root: Path, snapshots: bool, platform: str) -> KernelSpecManager:
    config = {"backend": "runsc", "pool_size": 1, "pool_snapshots": snapshots}
    (root / "k").mkdir(parents=True)
    (root / "k" / "kernel.json").write_text(
        json.dumps(build_kernelspec({**config, "platform": platform}))
    )
    return KernelSpecManager(kernel_dirs=[str(root)])


def _wait_pool_ready(timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.ready for p in list(WarmPool._pools.values()) if not p.closed):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm pool did not fill: {WarmPool.stats()}")
        time.sleep(0.1)


async def _burst(ksm: KernelSpecManager, n: int) -> tuple[list[float], list[AsyncKernelManager]]:
    t0 = time.monotonic()

    async def one() -> tuple[float, AsyncKernelManager]:
        km = AsyncKernelManager(kernel_name="k", kernel_spec_manager=ksm)
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
        finally:
            kc.stop_channels()
        return time.monotonic() - t0, km

    done = await asyncio.gather(*(one() for _ in range(n)))
    return sorted(t for t, _ in done), [km for _, km in done]


def measure(n: int, snapshots: bool, platform: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sk-restore-burst-"))
    first: KernelManager | None = None
    kms: list[AsyncKernelManager] = []
    try:
        ksm = _kernelspecs(root, snapshots, platform)
        first = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
        first.start_kernel()
        _wait_pool_ready()
        folders = [r.folder for r in SNAPSHOTS.values()]  # this process's
        images = sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())
        load_before = os.getloadavg()
        times, kms = asyncio.run(_burst(ksm, n))
        restored = sum(bool(km.provisioner.last_start_restored) for km in kms)  # type: ignore[union-attr]
        return {
            "mode": "restored from a snapshot" if snapshots else "fresh (pool_snapshots off)",
            "platform": platform,
            "n": n,
            "first_answering_s": round(times[0], 2),
            "all_answering_s": round(times[-1], 2),
            "restored": restored,
            "snapshot_mib": round(images / 2**20, 1),
            "load_before": [round(x, 1) for x in load_before],
            "load_after": [round(x, 1) for x in os.getloadavg()],
        }
    finally:

        async def shutdown() -> None:
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms))

        if kms:
            asyncio.run(shutdown())
        if first is not None:
            first.shutdown_kernel(now=True)
        WarmPool.drain_all()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--platform", default="systrap", choices=("systrap", "ptrace"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: snapshots need the runsc backend as root")
    for snapshots in (True, False):
        print(json.dumps(measure(args.n, snapshots, args.platform)), flush=True)


if __name__ == "__main__":
    main()
