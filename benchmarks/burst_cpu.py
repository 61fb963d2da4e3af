"""Where a burst of cold kernels spends the host's CPU: N kernels requested at once, and
the CPU seconds each process name used meanwhile.

    .venv/bin/python benchmarks/burst_cpu.py [--n 30] [--config '{"runtime": "runsc"}']

``--config`` is a kernelspec's settings (JSON; the default kernelspec's with no pool when
empty). The kernels are started through ``AsyncKernelManager`` and each is waited for
until it answers ``kernel_info``; then the CPU of every process (its own and its reaped
children's, from ``/proc/<pid>/stat``) is summed per process name over the burst. gVisor's
sentries are ``exe``. Prints one line. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from run import first_reply_async  # noqa: E402

from sandbox_kernel.kernelspec import build_kernelspec  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[tuple[str, str], float]:
    """(pid, name) -> CPU seconds so far, reaped children included."""
    out: dict[tuple[str, str], float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[(proc.name, name)] = sum(int(f) for f in fields[11:15]) / TICK
    return out


async def start_one(ksm: KernelSpecManager) -> tuple[AsyncKernelManager, Any]:
    km = AsyncKernelManager(kernel_name="burst", kernel_spec_manager=ksm)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await first_reply_async(kc)
    return km, kc


async def burst(ksm: KernelSpecManager, n: int) -> str:
    before = cpu_by_process()
    t0 = time.perf_counter()
    started = await asyncio.gather(*(start_one(ksm) for _ in range(n)))
    wall = time.perf_counter() - t0
    by_name: dict[str, float] = collections.defaultdict(float)
    for key, seconds in cpu_by_process().items():
        by_name[key[1]] += seconds - before.get(key, 0.0)
    for km, kc in started:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    top = ", ".join(
        f"{name} {s:.1f}" for name, s in sorted(by_name.items(), key=lambda i: -i[1])[:6]
    )
    return f"{n} at once: all answering after {wall:.1f} s; CPU seconds by process: {top}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--config", default="{}", help="kernelspec settings, JSON")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sk-burst-"))
    (root / "burst").mkdir()
    settings = {"pool_size": 0, **json.loads(args.config)}
    (root / "burst" / "kernel.json").write_text(json.dumps(build_kernelspec(settings)))
    ksm = KernelSpecManager(kernel_dirs=[str(root)])
    print(args.config, asyncio.run(burst(ksm, args.n)))


if __name__ == "__main__":
    main()
