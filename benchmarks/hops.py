"""Where a sandboxed kernel's extra time goes, per hop and per process, counted.

    .venv/bin/python benchmarks/hops.py [--backend docker|runsc|docker-runc] [--cells 200]
                                        [--strace-agent] [--out FILE]

Counters, not wall time (they survive a loaded machine): for N trivial cells and for a
20 MB print (``kernel_timing.py``'s, the benchmark's own), each process on the path is
counted by ``perf stat --per-thread`` (CPU time, syscalls entered, context switches, i.e.
wake-ups) on the host, and inside the sandbox by the kernel reading gVisor's
``/proc/<pid>/stat`` and ``/proc/<pid>/io`` (CPU, read and write syscalls) of itself and
of the agent (PID 1). The hops: kernel -> agent inside (gVisor's loopback TCP), agent ->
pipe (its stdout), pipe -> host relay (Docker's attach stream through dockerd and the
containerd shim, or runsc's pipe directly), relay -> client (127.0.0.1 TCP in this
process). With ``--backend docker-runc`` the agent and the kernel are host processes,
counted one by one, and ``--strace-agent`` adds the agent's syscalls by name (``strace
-c``, a pass of its own). Prints a markdown table per workload. Needs root (perf on other
processes) and the host set up by scripts/quickstart.sh.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from kernel_timing import (  # noqa: E402
    PRINT_MB,
    WARMUP_CELLS,
    cell_rtts,
    print_throughput,
    start,
    stop,
)
from run import kernel_pids  # noqa: E402

from sandbox_kernel.image.recipe import DEFAULT_IMAGE  # noqa: E402
from sandbox_kernel.kernelspec import build_kernelspec  # noqa: E402
from sandbox_kernel.relay.thread import RelayThread  # noqa: E402

EVENTS = "task-clock,raw_syscalls:sys_enter,context-switches"

# Run in the kernel: CPU ticks and read/write syscalls of the agent (PID 1) and the kernel.
INSIDE = r"""
import json, os
def counters(pid):
    st = open('/proc/%s/stat' % pid).read().rsplit(')', 1)[1].split()
    try:  # the agent's (root's) io is not readable by the kernel (uid 1000)
        io = dict(l.split(': ') for l in open('/proc/%s/io' % pid).read().splitlines() if ': ' in l)
    except OSError:
        io = {}
    tck = os.sysconf('SC_CLK_TCK')
    return {'cpu_ms': (int(st[11]) + int(st[12])) * 1000 / tck,
            'reads': int(io.get('syscr', -1)), 'writes': int(io.get('syscw', -1))}
print(json.dumps({'agent': counters(1), 'kernel': counters(os.getpid())}))
"""


def inside_counters(kc: Any) -> dict[str, dict[str, float]]:
    out: list[str] = []
    kc.execute_interactive(
        INSIDE,
        timeout=30,
        output_hook=lambda m: (
            out.append(m["content"]["text"]) if m["msg_type"] == "stream" else None
        ),
    )
    return json.loads("".join(out).strip().splitlines()[-1])  # type: ignore[no-any-return]


def host_groups(km: Any, args_backend: str) -> dict[int, str]:
    """Host thread id -> the part of the path it belongs to."""
    groups: dict[int, str] = {}
    relay_tid = RelayThread.get().submit(_native_id()).result()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        tid = int(task.name)
        groups[tid] = (
            "relay (host, asyncio thread)" if tid == relay_tid else "client (jupyter_client, ZMQ)"
        )
    for pid in kernel_pids(km):
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if comm.startswith("containerd-shim"):
            part = "containerd shim"
        elif args_backend == "docker-runc":  # no gVisor: the agent and kernel are host processes
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            part = "kernel" if b"ipykernel" in b" ".join(argv) else f"agent ({comm}, pid {pid})"
        else:
            part = f"gVisor ({comm})"
        for task in Path(f"/proc/{pid}/task").iterdir():
            groups[int(task.name)] = part
    dockerd = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    for pid in dockerd:
        for task in Path(f"/proc/{pid}/task").iterdir():
            groups[int(task.name)] = "dockerd"
    return groups


async def _native_id() -> int:
    return threading.get_native_id()


def counted(groups: dict[int, str], work: Callable[[], Any]) -> dict[str, dict[str, float]]:
    """Run ``work`` under ``perf stat`` on every thread in ``groups``; sums per part."""
    tids = ",".join(str(t) for t in groups)
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        perf = subprocess.Popen(
            ["perf", "stat", "-x", ";", "--per-thread", "-e", EVENTS, "-t", tids, "-o", out.name],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attached
        work()
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
        text = Path(out.name).read_text()
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        fields = line.split(";")
        if len(fields) < 4 or not fields[1].replace(".", "").isdigit():
            continue
        tid = int(fields[0].rsplit("-", 1)[-1])
        part = groups.get(tid)
        if part is not None:
            sums[part][fields[3]] += float(fields[1])
    return sums


def straced(pid: int, work: Callable[[], Any]) -> str:
    """``strace -c`` of one process (the agent, when it runs on the host) during ``work``."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        st = subprocess.Popen(["strace", "-f", "-c", "-S", "calls", "-p", str(pid), "-o", out.name],
                              stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.5)  # attached
        work()
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
        return Path(out.name).read_text()


def table(
    title: str, n: int, host: dict[str, dict[str, float]], inside: dict[str, dict[str, float]]
) -> list[str]:
    lines = [
        f"### {title} (per {'cell' if n > 1 else 'print'})",
        "",
        "| process | CPU ms | syscalls | wake-ups (context switches) | read / write syscalls |",
        "|---|---:|---:|---:|---:|",
    ]
    for part, ev in sorted(host.items(), key=lambda kv: -kv[1].get("task-clock", 0)):
        lines.append(
            f"| {part} | {ev.get('task-clock', 0) / n:.2f} |"
            f" {ev.get('raw_syscalls:sys_enter', 0) / n:.0f} |"
            f" {ev.get('context-switches', 0) / n:.0f} | |"
        )
    for part, ev in inside.items():
        lines.append(
            f"| {part} (inside gVisor) | {ev['cpu_ms'] / n:.2f} | | |"
            + (f" {ev['reads'] / n:.0f} / {ev['writes'] / n:.0f} |" if ev["reads"] >= 0 else " - |")
        )
    return [*lines, ""]


def diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {k: {f: b[k][f] - a[k][f] if a[k][f] >= 0 else -1.0 for f in a[k]} for k in a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="docker", choices=["docker", "runsc", "docker-runc"])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--out", help="also write the tables here")
    parser.add_argument(
        "--strace-agent", action="store_true",
        help="docker-runc only: also the agent's syscalls by name (strace -c), another pass",
    )  # fmt: skip
    args = parser.parse_args()
    if args.strace_agent and args.backend != "docker-runc":
        parser.error("--strace-agent needs --backend docker-runc (the agent as a host process)")
    specs = Path(tempfile.mkdtemp(prefix="sk-hops-"))
    atexit.register(shutil.rmtree, specs, ignore_errors=True)  # the temporary kernelspec
    (specs / "k").mkdir()
    spec = build_kernelspec({"image": DEFAULT_IMAGE, "backend": args.backend, "pool_size": 0})
    (specs / "k" / "kernel.json").write_text(json.dumps(spec))
    km, kc, _ = start(KernelSpecManager(kernel_dirs=[str(specs)]), "k")
    lines = [
        f"## Counted per hop: {args.backend} backend,"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    try:
        cell_rtts(kc, 5)
        groups = host_groups(km, args.backend)
        before = inside_counters(kc)
        host = counted(groups, lambda: cell_rtts(kc, args.cells))
        after = inside_counters(kc)
        n = args.cells + WARMUP_CELLS  # cell_rtts warms up first: those cells count too
        lines += table(f"{n} trivial cells", n, host, diff(before, after))
        before = inside_counters(kc)
        host = counted(groups, lambda: print_throughput(kc))
        after = inside_counters(kc)
        lines += table(f"a {PRINT_MB} MB print", 1, host, diff(before, after))
        if args.strace_agent:
            agent = next(int(g.split("pid ")[1].rstrip(")")) for g in set(groups.values())
                         if g.startswith("agent ("))  # fmt: skip
            passes: list[tuple[str, Callable[[], Any]]] = [
                (f"{n} trivial cells", lambda: cell_rtts(kc, args.cells)),
                (f"a {PRINT_MB} MB print", lambda: print_throughput(kc)),
            ]
            for title, work in passes:
                text = straced(agent, work).strip()
                lines += [f"### The agent's syscalls: {title}", "", "```", text, "```", ""]
    finally:
        stop(km, kc)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
