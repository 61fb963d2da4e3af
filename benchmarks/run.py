"""Side-by-side benchmark: a plain local ipykernel vs. the sandbox backends (Docker runc,
gVisor through Docker cold and warm, gVisor without Docker (the runsc backend) as root and
rootless, cold and warm, bubblewrap, firejail).

    .venv/bin/python benchmarks/run.py [--quick] [--configs a,b] [--out docs/benchmarks.md]

One process, one run, the same machine. For each configuration: launch (from
``start_kernel``, or the pool claim, to the first kernel_info_reply; median and p95 of N),
execute_request round trip of a trivial cell (p50/p99 of M), output throughput of a 50 MB
print (MB/s, bytes that reached the client), idle PSS per kernel (every host process of
the kernel, each address space once: for Docker the processes in the container's cgroup
plus its containerd shim, for the other backends the processes in the sandbox's cgroup).
Then kernels requested at once (1, 10, 30; 100 for a few): the time until all answer,
failed starts, host memory in use per kernel (MemAvailable), PSS, idle CPU. Every number
is also given as a ratio to the local kernel measured in the same run, and issue 11's
targets are marked met or not. Needs root (to read other processes' smaps) and the host
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

from sandbox_kernel.image.recipe import DEFAULT_IMAGE  # noqa: E402
from sandbox_kernel.kernelspec import build_kernelspec  # noqa: E402
from sandbox_kernel.pool import WarmPool  # noqa: E402

CONFIGS = {
    "local": None,  # jupyter_client's LocalProvisioner, the host's ipykernel
    "sandbox runc": {"backend": "docker-runc", "pool_size": 0},
    "sandbox runsc cold": {"pool_size": 0},
    "sandbox runsc warm": {"pool_size": 1},
    # The current gVisor beside Debian's (setup-host with SANDBOX_KERNEL_RUNSC=current).
    "sandbox runsc-current cold": {"runtime": "runsc-current", "pool_size": 0},
    "sandbox runsc-backend cold": {"backend": "runsc", "pool_size": 0},
    "sandbox runsc-backend current cold": {
        "backend": "runsc",
        "runtime": "runsc-current",
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
# Measured by a worker process running as an ordinary user (runsc --rootless).
ROOTLESS = ("sandbox runsc-backend rootless cold", "sandbox runsc-backend rootless warm")
SHARED_VENV = Path("/opt/sandbox-kernel/venv")
# Started 1, 10 and 30 at once (--scale).
SCALED = (
    "local",
    "sandbox runc",
    "sandbox runsc cold",
    "sandbox runsc warm",
    "sandbox runsc-current cold",
    "sandbox runsc-backend cold",
    "sandbox runsc-backend current cold",
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
            spec = {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "local",
                "language": "python",
            }
        else:
            spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (d / "kernel.json").write_text(json.dumps(spec))
    return root


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


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
    from sandbox_kernel.backends.runsc import RunscBackend, cgroups_path

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


def start(ksm: KernelSpecManager, name: str) -> tuple[KernelManager, Any, float]:
    """A kernel and its client; the time from ``start_kernel`` (for a warm pool: the
    claim) to the first kernel_info_reply."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    first_reply(kc)
    elapsed = time.perf_counter() - t0
    kc.wait_for_ready(timeout=120)  # IOPub connected before anything is measured on it
    return km, kc, elapsed


def stop(km: KernelManager, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


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
    for _ in range(n_start):
        if warm:
            wait_pool()
        km, kc, elapsed = start(ksm, name)
        if warm:
            assert km.provisioner.last_start_warm, "expected a warm start"  # type: ignore[union-attr]
        res.start.append(elapsed)
        stop(km, kc)
    say(f"{label}: {n_rtt} round trips, throughput, idle memory")
    km, kc, _ = start(ksm, name)
    try:
        for _ in range(20):  # warm up
            kc.execute("pass")
            kc.get_shell_msg(timeout=30)
        for _ in range(n_rtt):
            t0 = time.perf_counter()
            kc.execute("pass")
            kc.get_shell_msg(timeout=30)
            res.rtt.append(time.perf_counter() - t0)
        while True:  # drain iopub
            try:
                kc.get_iopub_msg(timeout=0.2)
            except Exception:
                break
        total = 50 * 2**20
        received = 0
        t0 = time.perf_counter()
        msg_id = kc.execute(
            "import sys\nchunk = 'x' * (1 << 20)\n"
            "for _ in range(50):\n    sys.stdout.write(chunk)\n"
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
        res.mbps = received / 2**20 / elapsed
        res.received_mb = received / 2**20
        assert received <= total
        time.sleep(3)
        res.idle_pss = kernel_pss_mib(km)
        res.echo = echo_rtts(km, kc, n_rtt)
    finally:
        stop(km, kc)
    return res


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
        "runsc": out("runsc", "--version"),
        "dockerd": out("docker", "version", "--format", "{{.Server.Version}}"),
        "bwrap": out("bwrap", "--version"),
        "firejail": out("firejail", "--version"),
        "python (host)": platform.python_version(),
        "ipykernel (host)": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
        "image": DEFAULT_IMAGE,
    }


def is_gvisor(label: str) -> bool:
    return "runsc" in label


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
            add(f"50 MB print >= {floor}x local", label, f"{ratio:.2f}x", ratio >= floor)
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
        "the local kernel, measured in the same run. The local kernel is the host's ipykernel;",
        "the sandboxes run the default image. A launch is timed from `start_kernel` (for a",
        "warm configuration: the pool claim) to the kernel's first `kernel_info_reply`.",
        "",
        "| | " + " | ".join(f"{k}: {v}" for k, v in info.items()) + " |",
        "|" + "---|" * (len(info) + 1),
        "",
        "## Targets (issue 11)",
        "",
        *targets(results),
        "",
        "## One kernel at a time",
        "",
        "| configuration | launch median | launch p95 | ratio | cell p50 | cell p99 | ratio |"
        " 50 MB print | ratio | idle PSS | vs local | TCP echo p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
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
        "--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)} (local is always run)"
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
    labels = list(CONFIGS)
    if args.configs:
        wanted = {"local", *(c.strip() for c in args.configs.split(","))}
        unknown = wanted - set(CONFIGS)
        if unknown:
            parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        labels = [label for label in CONFIGS if label in wanted]
    say = lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)  # noqa: E731
    specs = kernel_dirs()
    atexit.register(shutil.rmtree, specs, ignore_errors=True)  # the temporary kernelspecs
    ksm = KernelSpecManager(kernel_dirs=[str(specs)])
    results = {
        label: measure_rootless(label, args, say)
        if label in ROOTLESS
        else measure(ksm, label, args.starts, args.rtts, say)
        for label in labels
    }
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
