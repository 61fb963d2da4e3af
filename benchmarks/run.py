"""Side-by-side benchmark: a plain local ipykernel and gVisor's floor (a kernel and its
client in one gVisor sandbox) vs. the sandbox backends (Docker runc, gVisor through Docker
cold and warm, gVisor without Docker (the runsc backend) as root and rootless, cold and
warm, bubblewrap, firejail).

    .venv/bin/python benchmarks/run.py [--quick] [--configs a,b] [--out docs/benchmarks.md]

One process, one run, the same machine. For each configuration: launch (from
``start_kernel``, or the pool claim, to the first kernel_info_reply; median and p95 of N),
a warm start as users see it (``start_kernel`` to the reply of one kernel_info request),
execute_request round trip of a trivial cell (p50/p99 of M), output throughput of a 20 MB
print (MB/s, bytes that reached the client, the median of three after a warm-up print; the
timing code is ``kernel_timing.py``),
idle PSS per kernel (every host process of the kernel, each address space once: for
Docker the processes in the container's cgroup plus its containerd shim, for the other
backends the processes in the sandbox's cgroup).
Then kernels requested at once (1, 10, 30; 100 for a few): the time until all answer,
failed starts, host memory in use per kernel (MemAvailable), PSS, idle CPU. Every number
is also given as a ratio to the local kernel measured in the same run, every gVisor row
also to the floor (``FLOORS``: the same image and runsc, jupyter_client and ipykernel both
inside, measured by the same code), and issue 11's and issue 22's targets are marked met
or not. Needs root (to read other processes' smaps) and the host
set up by scripts/quickstart.sh. The rootless rows run in a worker process (``--worker``)
as an ordinary user (``--rootless-user``, default: a temporary user made and removed
here) with a cgroup delegated to it, using /opt/sandbox-kernel/venv
(scripts/shared-venv.sh) and this checkout (which that user must be able to read).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))

from kernel_timing import (  # noqa: E402
    PRINT_MB,
    cell_rtts,
    pct,
    print_rate,
    start,
    stop,
)

from sandbox_kernel.backends.runsc_tool import find_runsc  # noqa: E402
from sandbox_kernel.image.recipe import DEFAULT_IMAGE  # noqa: E402
from sandbox_kernel.kernelspec import build_kernelspec, host_kernelspec  # noqa: E402
from sandbox_kernel.pool import WarmPool  # noqa: E402
from sandbox_kernel.settings import BY_NAME  # noqa: E402

CONFIGS = {
    "local": None,  # jupyter_client's LocalProvisioner, the host's ipykernel
    "sandbox runc": {"backend": "docker-runc", "pool_size": 0},
    # The default runtime (runsc-current, the current gVisor setup-host builds) unless a
    # row names Debian's 2024 runsc ("runtime": "runsc"), measured beside it in one run.
    "sandbox runsc cold": {"pool_size": 0},
    "sandbox runsc warm": {"pool_size": 1},
    "sandbox runsc debian cold": {"runtime": "runsc", "pool_size": 0},
    "sandbox runsc-backend cold": {"backend": "runsc", "pool_size": 0},
    "sandbox runsc-backend debian cold": {
        "backend": "runsc",
        "runtime": "runsc",
        "pool_size": 0,
    },
    # A warm runsc-backend pool refills, and serves launches that find it empty, from a
    # snapshot (pool_snapshots, on by default, as root).
    "sandbox runsc-backend warm": {"backend": "runsc", "pool_size": 1},
    "sandbox runsc-backend warm, no snapshots": {
        "backend": "runsc",
        "pool_size": 1,
        "pool_snapshots": False,
    },
    "sandbox runsc-backend ptrace cold": {"backend": "runsc", "pool_size": 0, "platform": "ptrace"},
    "sandbox runsc-backend ptrace warm": {"backend": "runsc", "pool_size": 1, "platform": "ptrace"},
    "sandbox runsc-backend rootless cold": {"backend": "runsc", "pool_size": 0},
    "sandbox runsc-backend rootless warm": {"backend": "runsc", "pool_size": 1},
    "sandbox bwrap cold": {"backend": "bwrap", "pool_size": 0},
    "sandbox bwrap warm": {"backend": "bwrap", "pool_size": 1},
    "sandbox firejail cold": {
        "backend": "firejail",
        "pool_size": 0,
        "accept_unenforced": ["tmp_size"],
    },
}
DEFAULT_RUNTIME: str = BY_NAME["runtime"].default
# gVisor's floor (issue 22): a kernel and its client in one sandbox of the same image,
# through Docker, with the runtime named; measured by ``measure_floor``.
FLOORS = {
    "floor runsc": DEFAULT_RUNTIME,
    "floor runsc debian": "runsc",
    "floor runc": "runc",
}
# Measured by a worker process running as an ordinary user (runsc --rootless).
ROOTLESS = ("sandbox runsc-backend rootless cold", "sandbox runsc-backend rootless warm")
SHARED_VENV = Path("/opt/sandbox-kernel/venv")
# Started 1, 10 and 30 at once (--scale).
SCALED = (
    "local",
    "sandbox runc",
    "sandbox runsc cold",
    "sandbox runsc warm",
    "sandbox runsc debian cold",
    "sandbox runsc-backend cold",
    "sandbox runsc-backend debian cold",
    "sandbox runsc-backend warm",
    "sandbox runsc-backend warm, no snapshots",
    "sandbox runsc-backend ptrace warm",
    "sandbox bwrap cold",
    "sandbox firejail cold",
)
# And 100 at once, held idle, and asked again (issue 11's class of 100).
HUNDRED = ("local", "sandbox runsc-backend warm", "sandbox runsc-backend ptrace warm")


def slug(label: str) -> str:
    return label.replace(",", "").replace(" ", "-")


def kernel_dirs() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sk-bench-"))
    for name, config in CONFIGS.items():
        d = root / slug(name)
        d.mkdir()
        if config is None:
            spec = host_kernelspec("local")
        else:
            spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (d / "kernel.json").write_text(json.dumps(spec))
    return root


# -- memory ---------------------------------------------------------------------------
def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def kernel_pids(km: KernelManager | AsyncKernelManager) -> list[int]:
    prov = km.provisioner
    cid = getattr(prov, "sandbox_id", None)
    if cid is None:  # local kernel: the process and its children
        pid = prov.process.pid  # type: ignore[union-attr]
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [pid, *map(int, kids.split())]
    pids: set[int] = set()
    from sandbox_kernel.backends.pipe import PipeBackend
    from sandbox_kernel.backends.runsc import RunscBackend
    from sandbox_kernel.backends.runsc_oci import cgroups_path

    running = RunscBackend._sandboxes.get(cid)
    if running is not None:  # detached: every process of the sandbox is in its cgroup
        if running.cgroup is not None:
            return sorted(running.cgroup.pids())
        procs = Path("/sys/fs/cgroup/memory") / cgroups_path(cid).lstrip("/") / "cgroup.procs"
        return sorted(int(p) for p in procs.read_text().split())

    spawned = PipeBackend._sandboxes.get(cid)
    if spawned is not None:  # bwrap/firejail: the tool and everything in its cgroups
        pids.add(spawned.proc.pid)
        if spawned.cgroup is not None:
            pids.update(spawned.cgroup.pids())
        return sorted(pids)
    for root in ("/sys/fs/cgroup/memory/docker", "/sys/fs/cgroup/pids/docker",
                 "/sys/fs/cgroup/system.slice"):  # fmt: skip
        for name in (f"{cid}/cgroup.procs", f"docker-{cid}.scope/cgroup.procs"):
            f = Path(root) / name
            if f.exists():
                pids.update(int(p) for p in f.read_text().split())
    shim = subprocess.run(
        ["pgrep", "-f", f"containerd-shim.*{cid}"], capture_output=True, text=True
    )
    pids.update(int(p) for p in shim.stdout.split())
    return sorted(pids)


def same_address_space(a: int, b: int) -> bool:
    """kcmp(KCMP_VM): gVisor's systrap stubs are clones sharing one address space, and
    each reports every page of it in its smaps: summing them counts those pages again."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 312, "aarch64": 272}[platform.machine()]  # SYS_kcmp
    return bool(libc.syscall(nr, a, b, 1, 0, 0) == 0)  # KCMP_VM


def kernel_pss_mib(km: KernelManager | AsyncKernelManager) -> float:
    """PSS of the kernel's host processes, each address space counted once."""
    distinct: list[int] = []
    for pid in kernel_pids(km):
        if not any(same_address_space(pid, kept) for kept in distinct):
            distinct.append(pid)
    return sum(pss_kib(p) for p in distinct) / 1024


# -- measurements -----------------------------------------------------------------------
@dataclass
class Result:
    start: list[float] = field(default_factory=list)
    # Warm start as users see it: start_kernel to the reply of one kernel_info request.
    user_start: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    mbps: float = 0.0
    received_mb: float = 0.0
    idle_pss: float = 0.0
    echo: list[float] = field(default_factory=list)  # TCP echo into the kernel's network
    scale: dict[int, Scale] = field(default_factory=dict)


def wait_pool(timeout: float = 60) -> None:
    """Until every warm pool (one per configuration measured so far) is full."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = [p for p in list(WarmPool._pools.values()) if not p.closed]
        if pools and all(len(p.ready) >= p.size for p in pools):
            break
        time.sleep(0.05)
    # A pooled sandbox counts as ready once its kernel is initialised (inside/prewarm_kernel.py):
    # no extra settling time needed.


async def first_reply_async(kc: Any, timeout: float = 300) -> None:
    """``first_reply`` for an AsyncKernelClient."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kc.kernel_info()
        try:
            while True:
                msg = await kc.get_shell_msg(timeout=0.25)
                if msg["msg_type"] == "kernel_info_reply":
                    return
        except Empty:
            pass
    raise RuntimeError(f"no kernel_info_reply in {timeout} s")


def measure(
    ksm: KernelSpecManager, label: str, n_start: int, n_rtt: int, say: Callable[[str], None]
) -> Result:
    name = slug(label)
    warm = " warm" in label
    res = Result()
    say(f"{label}: {n_start} launches")
    if warm:  # prime the pool with one kernel
        km, kc, _ = start(ksm, name)
        stop(km, kc)
    for ask_once, times in ((False, res.start), (True, res.user_start)):
        if ask_once and not (warm or label == "local"):
            continue  # a cold start as users see it is the launch above, give or take a resend
        for _ in range(n_start):
            if warm:
                wait_pool()
            km, kc, elapsed = start(ksm, name, ask_once=ask_once)
            if warm:
                assert km.provisioner.last_start_warm, "expected a warm start"  # type: ignore[union-attr]
            times.append(elapsed)
            stop(km, kc)
    say(f"{label}: {n_rtt} round trips, throughput, idle memory")
    km, kc, _ = start(ksm, name)
    if warm:
        # The claim starts the pool's refill (a sandbox booting, a kernel importing); cells
        # and output are measured in the steady state after it, as for a cold kernel.
        wait_pool()
    try:
        res.rtt = cell_rtts(kc, n_rtt)
        res.mbps, res.received_mb = print_rate(kc)
        time.sleep(3)
        res.idle_pss = kernel_pss_mib(km)
        res.echo = echo_rtts(km, kc, n_rtt)
    finally:
        stop(km, kc)
    return res


def measure_floor(label: str, args: argparse.Namespace, say: Callable[[str], None]) -> Result:
    """gVisor's floor: ``benchmarks/kernel_timing.py``, the timing code of every other
    configuration, run with a local ipykernel and its client both inside one sandbox of the
    kernel image (``docker run --runtime``, no network, no mounts, read-only root). Docker's
    seccomp profile is off for this container only: under it, inside gVisor, libzmq cannot
    create its threads ("Operation not permitted (src/thread.cpp:241)")."""
    runtime = FLOORS[label]
    say(f"{label}: kernel and client inside one {runtime} sandbox")
    proc = subprocess.run(
        ["docker", "run", "--rm", "-i", f"--runtime={runtime}", "--network=none",
         "--security-opt", "seccomp=unconfined", "--read-only",
         "--tmpfs", "/tmp:size=256m", "--tmpfs", "/home/sandbox:size=64m,uid=1000",
         "--memory=2g", "--label", "org.sandbox-kernel.benchmark=floor",
         DEFAULT_IMAGE, "python3", "-", "--starts", str(args.starts), "--rtts", str(args.rtts)],
        input=(REPO / "benchmarks" / "kernel_timing.py").read_text(), capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"the floor {label!r} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return Result(**json.loads(proc.stdout.strip().splitlines()[-1]))


ECHO_SERVER = """
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 0)); srv.listen()
def serve():
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
threading.Thread(target=serve, daemon=True).start()
print(srv.getsockname()[1])
"""


def echo_rtts(km: KernelManager, kc: Any, n: int) -> list[float]:
    """Round trips of 100 bytes to a TCP echo server in the kernel: for a sandbox this is
    host port -> relay -> Docker attach -> agent -> gVisor's loopback, the relay's own cost."""
    import socket

    from sandbox_kernel.relay.listeners import HostListeners
    from sandbox_kernel.relay.thread import RelayThread

    out: list[str] = []
    kc.execute_interactive(ECHO_SERVER, timeout=30, output_hook=lambda m: out.append(
        m["content"].get("text", "")) if m["msg_type"] == "stream" else None)  # fmt: skip
    inside = int("".join(out).split()[-1])
    listeners = None
    port = inside
    session = getattr(km.provisioner, "session", None)
    if session is not None:
        listeners = HostListeners({"echo": inside})
        RelayThread.get().submit(listeners.open()).result()
        listeners.session = session
        port = listeners.ports["echo"]
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                s.sendall(b"x" * 100)
                got = 0
                while got < 100:
                    got += len(s.recv(4096))
                times.append(time.perf_counter() - t0)
            return times
    finally:
        if listeners is not None:
            RelayThread.get().submit(listeners.close()).result()


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def cpu_busy_cores(seconds: float) -> float:
    """Cores' worth of the host's CPU in use (every process) over ``seconds``."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return (1 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or 1)


@dataclass
class Scale:
    """``n`` kernels requested at once (one configuration)."""

    wall: float  # until every started kernel answered kernel_info
    median: float  # median launch to first kernel_info_reply
    pss: float  # mean PSS per kernel, MiB (each address space once)
    mem_up: float  # host memory in use per kernel: MemAvailable's drop while starting / n
    mem_down: float  # and its rise while removing them / n
    cpu: float  # idle CPU per kernel, % of one core (whole host over 10 s, / n)
    failed: int  # starts that failed
    answering: int  # kernels that answered a kernel_info round after they were all up


SETTLE = 5.0  # seconds for memory to settle before and after a step


async def scale_once(ksm: KernelSpecManager, name: str, n: int) -> Scale:
    """Start ``n`` kernels at once; measure the burst, then hold them idle and measure the
    host's memory and CPU, ask each for kernel_info once more, and remove them."""
    kms = [AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm) for _ in range(n)]
    kcs: list[Any] = []
    times: list[float] = []

    async def one(km: AsyncKernelManager) -> None:
        t0 = time.perf_counter()
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kcs.append(kc)
        await first_reply_async(kc)
        times.append(time.perf_counter() - t0)

    await asyncio.sleep(SETTLE)
    before = peak = mem_available_mib()
    t0 = time.perf_counter()
    try:
        outcomes = await asyncio.gather(*(one(km) for km in kms), return_exceptions=True)
        wall = time.perf_counter() - t0
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        for exc in failed[:3]:
            print(f"    a start failed: {exc!r}", file=sys.stderr)
        await asyncio.sleep(SETTLE)
        peak = mem_available_mib()
        up = (before - peak) / n
        cpu = await asyncio.to_thread(cpu_busy_cores, 10.0) * 100 / n
        pss = statistics.mean([kernel_pss_mib(km) for km in kms if km.has_kernel] or [0.0])
        answers = await asyncio.gather(
            *(first_reply_async(kc, timeout=60) for kc in kcs), return_exceptions=True
        )
        answering = sum(1 for a in answers if not isinstance(a, BaseException))
    finally:
        for kc in kcs:
            kc.stop_channels()
        await asyncio.gather(
            *(km.shutdown_kernel(now=True) for km in kms if km.has_kernel),
            return_exceptions=True,
        )
    await asyncio.sleep(SETTLE)
    down = (mem_available_mib() - peak) / n
    median = statistics.median(times) if times else float("nan")
    return Scale(wall, median, pss, up, down, cpu, len(failed), answering)


# -- report ------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return (
                subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
            )
        except (OSError, IndexError):
            return "?"

    import ipykernel
    import jupyter_client

    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB",
        "host kernel": platform.release(),
        "runsc (default)": out(find_runsc(DEFAULT_RUNTIME), "--version"),
        "runsc debian": out("runsc", "--version"),
        "dockerd": out("docker", "version", "--format", "{{.Server.Version}}"),
        "bwrap": out("bwrap", "--version"),
        "firejail": out("firejail", "--version"),
        "python (host)": platform.python_version(),
        "ipykernel (host)": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
        "image": DEFAULT_IMAGE,
    }


def is_gvisor(label: str) -> bool:
    """One of our gVisor kernels (not a floor)."""
    return "runsc" in label and label not in FLOORS


def floor_of(label: str, results: dict[str, Result]) -> Result | None:
    """The floor a gVisor row is compared with: the same runsc release's, when measured."""
    runtime = (CONFIGS.get(label) or {}).get("runtime", DEFAULT_RUNTIME)
    floor = next(f for f, r in FLOORS.items() if r == runtime)
    return results.get(floor)


# The default kernelspec (Docker backend, a pool of one) and the runsc backend's.
DEFAULT_KERNELSPEC = "sandbox runsc warm"
# Where docs/performance.md measures the cause of each issue-22 target not met.
GAPS = "performance.md#"
FLOOR_GAPS = {
    "trivial cell p50 <= 1.2x the floor": "cells-against-the-floor",
    f"{PRINT_MB} MB printed >= 0.8x the floor": "output-against-the-floor",
    "cold start <= 1.3x the floor": "cold-start-against-the-floor",
    "warm start as users see it p50 <= 150 ms": "warm-start-as-users-see-it",
    "host memory per idle kernel <= local + 40 MiB": "memory-through-docker",
    "30 at once <= 2x local, default kernelspec": "bursts-on-the-default-kernelspec",
}


def targets_floor(results: dict[str, Result]) -> list[str]:
    """Issue 22's targets: against gVisor's floor and as users see them, each marked met or
    not, for every gVisor configuration measured."""
    base = results["local"]
    rows: list[tuple[str, str, str, bool]] = []
    for label, res in results.items():
        floor = floor_of(label, results)
        if not is_gvisor(label):
            continue
        if floor is not None:
            r50 = pct(res.rtt, 50) / pct(floor.rtt, 50)
            rows.append(("trivial cell p50 <= 1.2x the floor", label,
                         f"{pct(res.rtt, 50) * 1e3:.1f} ms ({r50:.2f}x)", r50 <= 1.2))  # fmt: skip
            rout = res.mbps / floor.mbps
            rows.append((f"{PRINT_MB} MB printed >= 0.8x the floor", label,
                         f"{res.mbps:.0f} MB/s ({rout:.2f}x)", rout >= 0.8))  # fmt: skip
            if " cold" in label:
                med = statistics.median(res.start)
                rcold = med / statistics.median(floor.start)
                rows.append(("cold start <= 1.3x the floor", label,
                             f"{med:.2f} s ({rcold:.2f}x)", rcold <= 1.3))  # fmt: skip
        if res.user_start:
            med = statistics.median(res.user_start)
            rows.append(("warm start as users see it p50 <= 150 ms", label,
                         f"{med * 1e3:.0f} ms", med <= 0.150))  # fmt: skip
        common = sorted(set(res.scale) & set(base.scale) - {1})
        if common:
            n = common[-1]
            extra = res.scale[n].mem_up - base.scale[n].mem_up
            rows.append(("host memory per idle kernel <= local + 40 MiB", label,
                         f"{res.scale[n].mem_up:.0f} MiB ({extra:+.0f} MiB, {n} kernels)",
                         extra <= 40))  # fmt: skip
        if label == DEFAULT_KERNELSPEC and 30 in res.scale and 30 in base.scale:
            ratio = res.scale[30].wall / base.scale[30].wall
            rows.append(("30 at once <= 2x local, default kernelspec", label,
                         f"{res.scale[30].wall:.1f} s ({ratio:.2f}x)", ratio <= 2))  # fmt: skip
    order = list(dict.fromkeys(t for t, *_ in rows))
    rows.sort(key=lambda r: order.index(r[0]))

    def cause(target: str) -> str:
        return f"[measured]({GAPS}{FLOOR_GAPS[target]})" if target in FLOOR_GAPS else ""

    return [
        "| target | configuration | measured | met | cause when not met |",
        "|---|---|---|---|---|",
        *(f"| {t} | {lb} | {m} | {'met' if ok else '**not met**'} | {'' if ok else cause(t)} |"
          for t, lb, m, ok in rows),
    ]  # fmt: skip


def floor_table(results: dict[str, Result]) -> list[str]:
    """Every row against gVisor's floor (kernel and client in one sandbox) and the local
    kernel, all from this run."""
    base = results["local"]
    lines = [
        "| configuration | trivial cell p50 | x local | x floor |"
        f" {PRINT_MB} MB printed | x local | x floor | start median | x local | x floor |"
        " warm start as users see it (p50 / max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def x(a: float, b: float | None) -> str:
        return f"{a / b:.2f}x" if b else "-"

    for label, res in results.items():
        floor = floor_of(label, results) if is_gvisor(label) else None
        f50 = pct(floor.rtt, 50) if floor else None
        fst = statistics.median(floor.start) if floor and " cold" in label else None
        med = statistics.median(res.start)
        us = res.user_start
        user = f"{statistics.median(us) * 1e3:.0f} / {max(us) * 1e3:.0f} ms" if us else "-"
        p50 = pct(res.rtt, 50)
        lines.append(
            f"| {label} | {p50 * 1e3:.2f} ms | {x(p50, pct(base.rtt, 50))} | {x(p50, f50)} |"
            f" {res.mbps:.0f} MB/s | {x(res.mbps, base.mbps)} |"
            f" {x(res.mbps, floor.mbps if floor else None)} | {med:.2f} s |"
            f" {x(med, statistics.median(base.start))} | {x(med, fst)} | {user} |"
        )
    return lines


def targets(results: dict[str, Result]) -> list[str]:
    """Issue 11's targets, each marked met or not, for every configuration it applies to."""
    base = results["local"]
    rows: list[tuple[str, str, str, bool]] = []

    def add(target: str, label: str, measured: str, met: bool) -> None:
        rows.append((target, label, measured, met))

    for label, res in results.items():
        if label == "local":
            continue
        med = statistics.median(res.start)
        if is_gvisor(label) and 30 in res.scale and 30 in base.scale:
            extra = res.scale[30].mem_up - base.scale[30].mem_up
            add("host memory per idle kernel (30 kernels) <= local + 40 MiB", label,
                f"{res.scale[30].mem_up:.0f} MiB ({extra:+.0f} MiB)", extra <= 40)  # fmt: skip
        if is_gvisor(label) and 100 in res.scale:
            sc = res.scale[100]
            add("100 idle kernels started and answering", label,
                f"{sc.answering}/100 answering, {sc.mem_up * 100 / 1024:.1f} GiB in use,"
                f" {sc.cpu * 100:.0f} % of a core idle", sc.answering == 100)  # fmt: skip
            add("100 at once: no failed start", label, f"{sc.failed} failed", sc.failed == 0)
        if is_gvisor(label) and 30 in res.scale and 30 in base.scale:
            ratio = res.scale[30].wall / base.scale[30].wall
            add("30 at once, all answering: <= 2x local", label,
                f"{res.scale[30].wall:.1f} s ({ratio:.2f}x)", ratio <= 2)  # fmt: skip
        if is_gvisor(label) and " warm" in label:
            add("pool claim to kernel_info reply p50 <= 150 ms", label, f"{med * 1e3:.0f} ms",
                med <= 0.150)  # fmt: skip
        if is_gvisor(label) and " cold" in label:
            ratio = med / statistics.median(base.start)
            add("cold launch <= 2x local", label, f"{med:.2f} s ({ratio:.2f}x)", ratio <= 2)
        if is_gvisor(label):
            r50 = pct(res.rtt, 50) / pct(base.rtt, 50)
            r99 = pct(res.rtt, 99) / pct(base.rtt, 99)
            add("trivial cell p50 <= 1.5x local", label, f"{r50:.2f}x", r50 <= 1.5)
            add("trivial cell p99 <= 2x local", label, f"{r99:.2f}x", r99 <= 2)
        if is_gvisor(label) or label == "sandbox runc":
            floor = 0.7 if is_gvisor(label) else 0.9
            ratio = res.mbps / base.mbps
            add(f"{PRINT_MB} MB print >= {floor}x local", label, f"{ratio:.2f}x", ratio >= floor)
    order = list(dict.fromkeys(t for t, *_ in rows))
    rows.sort(key=lambda r: order.index(r[0]))
    return [
        "| target | configuration | measured | met |",
        "|---|---|---|---|",
        *(f"| {t} | {lb} | {m} | {'met' if ok else '**not met**'} |" for t, lb, m, ok in rows),
    ]


def report(results: dict[str, Result], info: dict[str, str], args: argparse.Namespace) -> str:
    base = results["local"]
    b_start = statistics.median(base.start)
    b_rtt = pct(base.rtt, 50)

    def r(x: float, b: float) -> str:
        return f"{x / b:.2f}x" if b else "-"

    lines = [
        "# Benchmarks",
        "",
        f"Written by `benchmarks/run.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({args.starts} launches, {args.rtts} round trips per configuration). Ratios are to",
        "the local kernel, or to gVisor's floor, measured in the same run. The local kernel is",
        "the host's ipykernel; the sandboxes run the default image. The floor is a kernel and",
        "its client (jupyter_client, the same timing code, `benchmarks/kernel_timing.py`) both",
        "inside one sandbox of that image, through Docker with the runtime named: what a whole",
        "server in one gVisor sandbox gets. A launch is timed from `start_kernel` (for a warm",
        "configuration: the pool claim) to the kernel's first `kernel_info_reply`, the request",
        "repeated every 0.25 s; a warm start as users see it, from `start_kernel` to the reply",
        "of a single `kernel_info` request. Output: the median of three 20 MB prints after a",
        "first one (a kernel's first large output is slower everywhere).",
        "",
        "| | " + " | ".join(f"{k}: {v}" for k, v in info.items()) + " |",
        "|" + "---|" * (len(info) + 1),
        "",
        "## Targets against gVisor's floor (issue 22)",
        "",
        *targets_floor(results),
        "",
        "## Against gVisor's floor",
        "",
        *floor_table(results),
        "",
        "## Targets (issue 11)",
        "",
        *targets(results),
        "",
        "## One kernel at a time",
        "",
        "| configuration | launch median | launch p95 | ratio | cell p50 | cell p99 | ratio |"
        f" {PRINT_MB} MB print | ratio | idle PSS | vs local | TCP echo p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        if label in FLOORS:  # in the floor table above: no host memory or echo of its own
            continue
        med, p95 = statistics.median(res.start), pct(res.start, 95)
        p50, p99 = pct(res.rtt, 50), pct(res.rtt, 99)
        lines.append(
            f"| {label} | {med:.2f} s | {p95:.2f} s | {r(med, b_start)} | {p50 * 1e3:.2f} ms |"
            f" {p99 * 1e3:.2f} ms | {r(p50, b_rtt)} | {res.mbps:.0f} MB/s"
            f" ({res.received_mb:.0f} MB arrived) | {r(res.mbps, base.mbps)} |"
            f" {res.idle_pss:.0f} MiB | {res.idle_pss - base.idle_pss:+.0f} MiB |"
            f" {pct(res.echo, 50) * 1e3:.2f} / {pct(res.echo, 99) * 1e3:.2f} ms |"
        )
    lines += [
        "",
        "## Kernels requested at once",
        "",
        "Kernels started at once (AsyncKernelManager): wall time until all answered",
        "kernel_info, the median launch, starts that failed, then with all of them idle:",
        "host memory in use per kernel (the drop of `MemAvailable` while they started / its",
        "rise while they were removed, divided by their number: unlike PSS it does not",
        "divide shared pages), PSS per kernel (each address space once), the host's CPU in",
        "use per kernel over 10 s (% of one core), and how many answered one more",
        "kernel_info round.",
        "",
        "| configuration | kernels | all answering | median launch | failed | host memory"
        " per kernel | PSS per kernel | idle CPU per kernel | answering |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        for n, sc in sorted(res.scale.items()):
            lines.append(
                f"| {label} | {n} | {sc.wall:.1f} s | {sc.median:.1f} s | {sc.failed} |"
                f" {sc.mem_up:.0f} / {sc.mem_down:.0f} MiB | {sc.pss:.0f} MiB |"
                f" {sc.cpu:.2f} % | {sc.answering}/{n} |"
            )
    return "\n".join(lines) + "\n"


# -- rootless rows: a worker process as an ordinary user ------------------------------------
def measure_rootless(label: str, args: argparse.Namespace, say: Callable[[str], None]) -> Result:
    """Run ``measure`` for ``label`` in a worker process (this script, ``--worker``) as an
    ordinary user with a delegated cgroup; return its result."""
    import pwd

    from sandbox_kernel.backends.cgroups import delegate_cgroups, remove_delegation

    python = SHARED_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: run `sudo scripts/shared-venv.sh` (rootless rows)")
    name = args.rootless_user or _temporary_user()
    pw = pwd.getpwnam(name)
    delegate_cgroups(name, memory_bytes=64 * 2**30, cpus=os.cpu_count() or 1, pids=100_000)
    home = Path(tempfile.mkdtemp(prefix="sk-bench-home-"))
    os.chown(home, pw.pw_uid, pw.pw_gid)
    say(f"{label}: as user {name} (runsc --rootless, delegated cgroup)")
    try:
        proc = subprocess.run(
            [str(python), str(REPO / "benchmarks" / "run.py"), "--worker", label,
             "--starts", str(args.starts), "--rtts", str(args.rtts)],
            user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd=home, stdout=subprocess.PIPE,
            text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                            "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
        remove_delegation(name)
        if not args.rootless_user:  # the temporary user's runsc state folder (now empty)
            shutil.rmtree(f"/tmp/sandbox-kernel-runsc-{pw.pw_uid}", ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"the rootless worker for {label!r} failed (is {REPO} readable by {name}?)")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["scale"] = {int(n): Scale(**v) for n, v in data.get("scale", {}).items()}
    return Result(**data)


def _temporary_user() -> str:
    import secrets

    name = f"sk-bench-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True, capture_output=True,
    )  # fmt: skip
    atexit.register(subprocess.run, ["userdel", name], check=False, capture_output=True)
    return name


def worker(label: str, args: argparse.Namespace) -> None:
    """``--worker``: measure one configuration in this process; print the result as JSON."""
    from dataclasses import asdict

    specs = kernel_dirs()
    try:
        ksm = KernelSpecManager(kernel_dirs=[str(specs)])
        res = measure(ksm, label, args.starts, args.rtts, lambda m: print(m, file=sys.stderr))
        WarmPool.drain_all()
    finally:
        shutil.rmtree(specs, ignore_errors=True)
    print(json.dumps(asdict(res)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--rtts", type=int, default=500)
    parser.add_argument("--scale", default="1,10,30", help="concurrent kernel counts")
    parser.add_argument(
        "--no-hundred", dest="hundred", action="store_false",
        help=f"skip the 100 kernels at once ({', '.join(HUNDRED)})",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="3 launches, 50 round trips, 1,3, no 100"
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--configs",
        help=f"comma-separated subset of: {', '.join([*FLOORS, *CONFIGS])} (local is always run)",
    )
    parser.add_argument(
        "--rootless-user",
        help="ordinary user for the rootless rows (default: a temporary one, removed after)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, JSON out
    args = parser.parse_args()
    if args.quick:
        args.starts, args.rtts, args.scale, args.hundred = 3, 50, "1,3", False
    if args.worker:
        worker(args.worker, args)
        return
    known = ["local", *FLOORS, *(c for c in CONFIGS if c != "local")]
    labels = known
    if args.configs:
        wanted = {"local", *(c.strip() for c in args.configs.split(","))}
        unknown = wanted - set(known)
        if unknown:
            parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        labels = [label for label in known if label in wanted]
    say = lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)  # noqa: E731
    specs = kernel_dirs()
    atexit.register(shutil.rmtree, specs, ignore_errors=True)  # the temporary kernelspecs
    ksm = KernelSpecManager(kernel_dirs=[str(specs)])
    results = {}
    for label in labels:
        if label in FLOORS:
            results[label] = measure_floor(label, args, say)
        elif label in ROOTLESS:
            results[label] = measure_rootless(label, args, say)
        else:
            results[label] = measure(ksm, label, args.starts, args.rtts, say)
    for label in (lb for lb in SCALED if lb in results):
        counts = [int(x) for x in args.scale.split(",")]
        if label in HUNDRED and args.hundred:
            counts.append(100)
        for n in counts:
            say(f"{label}: {n} concurrent kernels")
            results[label].scale[n] = asyncio.run(scale_once(ksm, slug(label), n))
    WarmPool.drain_all()
    text = report(results, versions(), args)
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
