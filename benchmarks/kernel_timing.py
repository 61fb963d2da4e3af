"""The timing code of ``benchmarks/run.py``, shared by every configuration it measures.

Standard library and jupyter_client only, so that the same code also measures gVisor's
floor: ``run.py`` sends this file over stdin into one sandbox of the kernel image
(``python3 - --starts N --rtts M``), where it starts a local ipykernel next to its client,
both inside that sandbox, and prints its results as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

PRINT_MB = 20  # the printed-output measurement: 20 MB in 1 MiB writes
WARMUP_CELLS = 20


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def first_reply(kc: Any, timeout: float = 120) -> None:
    """Until the kernel's first kernel_info_reply. The request is repeated every 0.25 s (a
    request sent before the kernel listens may be lost); the first reply counts. Not
    ``wait_for_ready``: that also waits 0.2 s for IOPub to go quiet, every time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kc.kernel_info()
        try:
            while True:
                if kc.get_shell_msg(timeout=0.25)["msg_type"] == "kernel_info_reply":
                    return
        except Empty:
            pass
    raise RuntimeError(f"no kernel_info_reply in {timeout} s")


def one_reply(kc: Any, timeout: float = 60) -> None:
    """One kernel_info request and its reply, as a client that asks once sees it (a lost
    request shows as a long wait, not hidden by a resend)."""
    msg_id = kc.kernel_info()
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return


def start(ksm: KernelSpecManager, name: str, ask_once: bool = False) -> tuple[Any, Any, float]:
    """A kernel and its client; the time from ``start_kernel`` to the first
    kernel_info_reply (``ask_once``: to the reply of a single request)."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    (one_reply if ask_once else first_reply)(kc)
    elapsed = time.perf_counter() - t0
    kc.wait_for_ready(timeout=120)  # IOPub connected before anything is measured on it
    return km, kc, elapsed


def stop(km: Any, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def cell_rtts(kc: Any, n: int) -> list[float]:
    """Round trips of a trivial cell (execute_request to execute_reply), after a warm-up."""
    for _ in range(WARMUP_CELLS):
        kc.execute("pass")
        kc.get_shell_msg(timeout=30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        kc.execute("pass")
        kc.get_shell_msg(timeout=30)
        times.append(time.perf_counter() - t0)
    drain(kc)
    return times


def drain(kc: Any) -> None:
    """Read IOPub until it has been quiet for 0.2 s (what earlier requests left there)."""
    while True:
        try:
            kc.get_iopub_msg(timeout=0.2)
        except Empty:
            break


def print_throughput(kc: Any, mb: int = PRINT_MB) -> tuple[float, float]:
    """MB/s of an ``mb`` MB print that reached the client, and the MB that arrived."""
    received = 0
    t0 = time.perf_counter()
    msg_id = kc.execute(
        "import sys\nchunk = 'x' * (1 << 20)\n"
        f"for _ in range({mb}):\n    sys.stdout.write(chunk)\n"
        "sys.stdout.flush()"
    )
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    elapsed = time.perf_counter() - t0
    assert received <= mb * 2**20
    return received / 2**20 / elapsed, received / 2**20


PRINT_ROUNDS = 3  # prints measured after a first one, which warms the path up


def print_rate(kc: Any, rounds: int = PRINT_ROUNDS) -> tuple[float, float]:
    """The median MB/s of ``rounds`` prints after a warm-up print (a kernel's first large
    output is slower everywhere, the local kernel's too), and the MB the last one brought."""
    print_throughput(kc)
    runs = [print_throughput(kc) for _ in range(rounds)]
    return statistics.median([r[0] for r in runs]), runs[-1][1]


def local_spec_dir() -> Path:
    """A kernelspec folder with one kernel, ``local``: this interpreter's ipykernel."""
    root = Path(tempfile.mkdtemp(prefix="sk-bench-"))
    (root / "local").mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "local",
        "language": "python",
        # Named, not left to the default: where sandbox-kernel installed python3, a spec
        # naming no provisioner runs sandboxed (kernelspec.host_kernelspec; this script
        # also runs where sandbox_kernel is not installed).
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}},
    }
    (root / "local" / "kernel.json").write_text(json.dumps(spec))
    return root


def main() -> None:
    """In the floor's sandbox: the local kernel's launches, cells and output, as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--rtts", type=int, default=50)
    args = parser.parse_args()
    ksm = KernelSpecManager(kernel_dirs=[str(local_spec_dir())])
    starts, user_starts = [], []
    for _ in range(args.starts):
        km, kc, elapsed = start(ksm, "local")
        starts.append(elapsed)
        stop(km, kc)
        km, kc, elapsed = start(ksm, "local", ask_once=True)
        user_starts.append(elapsed)
        stop(km, kc)
    km, kc, _ = start(ksm, "local")
    try:
        rtt = cell_rtts(kc, args.rtts)
        mbps, received_mb = print_rate(kc)
    finally:
        stop(km, kc)
    result = {"start": starts, "user_start": user_starts, "rtt": rtt, "mbps": mbps,
              "received_mb": received_mb}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
