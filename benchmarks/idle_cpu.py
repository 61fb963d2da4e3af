"""Idle CPU of a sandboxed kernel, per gVisor release and backend: one idle kernel of each
configuration, side by side, and the CPU its sandbox's own cgroup (cpuacct) used over a
window, as % of one core. The cgroup counts the sentry, gofer and their stubs and nothing
else, so the rest of a shared machine's load does not enter the figure (benchmarks/run.py's
idle CPU is the whole host's). Results: docs/backends.md, "The current gVisor".

    sudo .venv/bin/python benchmarks/idle_cpu.py [--seconds 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_kernel.backends.runsc_oci import cgroups_path
from sandbox_kernel.kernelspec import build_kernelspec

CONFIGS = {
    "docker, runsc 20240729": {"runtime": "runsc"},
    "docker, runsc-current": {"runtime": "runsc-current"},
    "runsc backend, runsc 20240729": {"backend": "runsc", "runtime": "runsc"},
    "runsc backend, runsc-current": {"backend": "runsc", "runtime": "runsc-current"},
}
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def usage_file(backend: str, sandbox_id: str) -> Path:
    """The sandbox's cpuacct.usage (ns): Docker's container cgroup, or runsc's own."""
    if backend == "runsc":
        return CPUACCT / cgroups_path(sandbox_id).lstrip("/") / "cpuacct.usage"
    return CPUACCT / "docker" / sandbox_id / "cpuacct.usage"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sk-idle-") as specs:
        for i, config in enumerate(CONFIGS.values()):
            (Path(specs) / f"k{i}").mkdir()
            spec = build_kernelspec({**config, "pool_size": 0})
            (Path(specs) / f"k{i}" / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[specs])
        kernels: dict[str, tuple[KernelManager, Path]] = {}
        try:
            for i, (label, config) in enumerate(CONFIGS.items()):
                km = KernelManager(kernel_name=f"k{i}", kernel_spec_manager=ksm)
                km.start_kernel()
                kc = km.client()
                kc.start_channels()
                kc.wait_for_ready(timeout=120)
                kc.stop_channels()
                sandbox = str(km.provisioner.sandbox_id)  # type: ignore[union-attr]
                kernels[label] = (km, usage_file(str(config.get("backend", "docker")), sandbox))
            time.sleep(5)  # past the start's own work
            results: dict[str, list[float]] = {label: [] for label in kernels}
            for _ in range(args.rounds):
                before = {k: int(f.read_text()) for k, (_km, f) in kernels.items()}
                t0 = time.monotonic()
                time.sleep(args.seconds)
                elapsed = time.monotonic() - t0
                for label, (_km, f) in kernels.items():
                    used = (int(f.read_text()) - before[label]) / 1e9
                    results[label].append(round(100 * used / elapsed, 3))
        finally:
            for km, _f in kernels.values():
                km.shutdown_kernel(now=True)
    print(json.dumps({"seconds": args.seconds, "idle_cpu_percent_of_a_core": results}, indent=1))


if __name__ == "__main__":
    main()
