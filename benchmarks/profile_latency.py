"""Where a sandboxed kernel's time goes: a latency profile, local vs runc vs runsc.

    .venv/bin/python benchmarks/profile_latency.py [--out docs/performance.md]

Three views, measured in one run on one machine, each printed and written as markdown:

1. **One trivial cell, step by step.** The timestamps ipykernel puts on its messages
   (``status: busy``, ``execute_input``, ``execute_result``, ``status: idle``, the
   reply) against the client's clock; one clock serves both, since gVisor's clock is
   the host's.
2. **Primitives inside the kernel.** Each one a kernel does many times per message:
   a syscall, a thread wake-up (futex, eventfd + epoll), a ZeroMQ message between two
   threads, ipykernel's hand-off to its IOPub thread with and without a message, and a
   ``print`` + flush.
3. **A cold start, phase by phase.** The provisioner's backend calls, timed.

Needs the host set up by scripts/quickstart.sh (root, dockerd with runsc, the image).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox_kernel import boot as boot_module  # noqa: E402
from sandbox_kernel import sandbox as sandbox_module  # noqa: E402
from sandbox_kernel.backends.docker import DockerBackend  # noqa: E402
from sandbox_kernel.image.recipe import DEFAULT_IMAGE  # noqa: E402
from sandbox_kernel.kernelspec import build_kernelspec, host_kernelspec  # noqa: E402

CONFIGS: dict[str, dict[str, Any] | None] = {
    "local": None,
    "runc": {"runtime": "runc", "allow_weaker_runtime": True, "pool_size": 0},
    # The default runtime (runsc-current) and Debian's 2024 runsc, side by side.
    "runsc": {"pool_size": 0},
    "runsc-debian": {"runtime": "runsc", "pool_size": 0},
}

# Runs inside the kernel; prints one JSON line: primitive -> [p50 us, p90 us].
PRIMITIVES = r"""
import json, os, select, threading, time, sys
import zmq
from ipykernel.kernelapp import IPKernelApp

def stat(f, n=300):
    v = []
    for _ in range(n):
        t = time.perf_counter(); f(); v.append(time.perf_counter() - t)
    v.sort()
    return [round(1e6 * v[n // 2], 1), round(1e6 * v[int(n * 0.9)], 1)]

out = {}
out["syscall (getppid)"] = stat(os.getppid, 2000)
out["pure Python: sum(range(100000))"] = stat(lambda: sum(range(100000)), 50)
out["allocate a 30000-int list (fresh pages)"] = stat(lambda: list(range(30000)), 200)
a, b = threading.Event(), threading.Event()
def events():
    while True:
        a.wait(); a.clear(); b.set()
threading.Thread(target=events, daemon=True).start()
def ping_event():
    a.set(); b.wait(); b.clear()
out["thread wake-up, round trip (futex)"] = stat(ping_event)
fa, fb = os.eventfd(0), os.eventfd(0)
def eventfds():
    ep = select.epoll(); ep.register(fa, select.EPOLLIN)
    while True:
        ep.poll(); os.eventfd_read(fa); os.eventfd_write(fb, 1)
threading.Thread(target=eventfds, daemon=True).start()
ep = select.epoll(); ep.register(fb, select.EPOLLIN)
def ping_eventfd():
    os.eventfd_write(fa, 1); ep.poll(); os.eventfd_read(fb)
out["thread wake-up, round trip (eventfd + epoll)"] = stat(ping_eventfd)
ctx = zmq.Context()
s1 = ctx.socket(zmq.PAIR); s1.bind("inproc://profile")
s2 = ctx.socket(zmq.PAIR); s2.connect("inproc://profile")
def echo():
    while True:
        s2.send(s2.recv())
threading.Thread(target=echo, daemon=True).start()
def ping_zmq():
    s1.send(b"x"); s1.recv()
out["ZeroMQ message between threads, round trip"] = stat(ping_zmq)
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
for sock in (cli, peer):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def tcp():
    cli.sendall(b"x" * 300); peer.recv(1000)
out["TCP send -> recv over loopback"] = stat(tcp)
pub = ctx.socket(zmq.PUB); port = pub.bind_to_random_port("tcp://127.0.0.1")
subs = ctx.socket(zmq.SUB); subs.connect("tcp://127.0.0.1:%d" % port)
subs.setsockopt(zmq.SUBSCRIBE, b"")
time.sleep(0.5)
def pubsub():
    pub.send(b"x" * 300); subs.recv()
out["ZeroMQ PUB -> SUB over loopback TCP"] = stat(pubsub)
kernel = IPKernelApp.instance().kernel
io = kernel.iopub_socket.io_thread
def handoff():
    e = threading.Event(); io.schedule(e.set); e.wait()
out["hand-off to ipykernel's IOPub thread"] = stat(handoff)
parent = kernel.get_parent("shell")
def publish():
    e = threading.Event()
    content = {"name": "stdout", "text": ""}
    kernel.session.send(kernel.iopub_socket, "stream", content, parent=parent)
    io.schedule(e.set); e.wait()
out["IOPub message published (hand-off + send)"] = stat(publish, 200)
def printed():
    sys.stdout.write(""); print("", end="", flush=True)
out["print + flush (IOPub round trip)"] = stat(printed, 100)
print(json.dumps(out))
"""

STEPS = ["client -> busy", "busy -> execute_input", "execute_input -> result",
         "result -> idle", "idle -> client", "whole cell (reply + idle at client)"]  # fmt: skip


def kernel_dirs() -> KernelSpecManager:
    root = Path(tempfile.mkdtemp(prefix="sk-profile-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, config in CONFIGS.items():
        (root / name).mkdir()
        if config is None:
            spec: dict[str, Any] = host_kernelspec(name)
        else:
            spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (root / name / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


def stamp(value: Any) -> float:
    return (
        value.timestamp()
        if isinstance(value, datetime)
        else datetime.fromisoformat(value).timestamp()
    )


def cell_steps(kc: Any, n: int) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    for _ in range(n):
        t0 = time.time()
        msg_id = kc.execute("1")
        seen: dict[str, float] = {}
        while "idle" not in seen:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["content"].get("execution_state") or msg["msg_type"]
            seen[kind] = stamp(msg["header"]["date"])
        t_idle = time.time()
        kc.get_shell_msg(timeout=30)
        t_end = time.time()
        marks = [t0, seen["busy"], seen["execute_input"], seen["execute_result"], seen["idle"]]
        for name, a, b in zip(STEPS, marks, [*marks[1:], t_idle], strict=False):
            steps[name].append(b - a)
        steps[STEPS[-1]].append(t_end - t0)
    return steps


def primitives(kc: Any) -> dict[str, list[float]]:
    lines: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            lines.append(msg["content"]["text"])

    reply = kc.execute_interactive(PRIMITIVES, timeout=300, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    found: dict[str, list[float]] = json.loads("".join(lines).strip().splitlines()[-1])
    return found


def cold_phases(ksm: KernelSpecManager, name: str, n: int) -> dict[str, list[float]]:
    """Times of the backend calls during cold starts (the provisioner's own calls)."""
    phases: dict[str, list[float]] = {}

    def timed(owner: Any, attr: str, label: str) -> Callable[[], None]:
        original = getattr(owner, attr)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                phases.setdefault(label, []).append(time.perf_counter() - t)

        setattr(owner, attr, wrapper)
        return lambda: setattr(owner, attr, original)

    undo = [
        timed(DockerBackend, "preflight", "preflight (daemon, runtime, image)"),
        timed(DockerBackend, "create", "container create"),
        timed(DockerBackend, "start", "container start (runsc boots the sandbox)"),
        timed(boot_module, "_send_agent", "agent sent, hello back"),
        timed(sandbox_module, "start_kernel", "kernel process started"),
    ]
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
            km.start_kernel()
            t1 = time.perf_counter()
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            t2 = time.perf_counter()
            phases.setdefault("launch_kernel total", []).append(t1 - t0)
            phases.setdefault("kernel ready (ipykernel import + init)", []).append(t2 - t1)
            phases.setdefault("launch to kernel_info_reply", []).append(t2 - t0)
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        for u in undo:
            u()
    return phases


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.2f}"


def report(
    steps: dict[str, dict[str, list[float]]],
    prims: dict[str, dict[str, list[float]]],
    cold: dict[str, dict[str, list[float]]],
    cells: int,
) -> str:
    names = list(steps)
    out = [
        "Generated by `benchmarks/profile_latency.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the side-by-side benchmark "
        "is [benchmarks.md](benchmarks.md). `runsc`: the default runtime (the current gVisor,"
        " `runsc-current`); `runsc-debian`: Debian's 2024 runsc; both through Docker.",
        "",
        f"## One trivial cell, step by step (median of {cells}, ms)",
        "",
        "| step | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for step in STEPS:
        out.append(f"| {step} | " + " | ".join(ms(steps[n][step]) for n in names) + " |")
    out += [
        "",
        "## Primitives inside the kernel (p50 / p90, µs)",
        "",
        "| primitive | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for prim in next(iter(prims.values())):
        cells_ = [f"{prims[n][prim][0]:g} / {prims[n][prim][1]:g}" for n in names]
        out.append(f"| {prim} | " + " | ".join(cells_) + " |")
    out += ["", "## A cold start, phase by phase (median, s)", ""]
    cold_names = list(cold)
    out += ["| phase | " + " | ".join(cold_names) + " |", "|---|" + "---:|" * len(cold_names)]
    for phase in next(iter(cold.values())):
        row = [f"{statistics.median(cold[n][phase]):.3f}" for n in cold_names]
        out.append(f"| {phase} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--out", help="also write the markdown tables here")
    args = parser.parse_args()
    ksm = kernel_dirs()
    steps: dict[str, dict[str, list[float]]] = {}
    prims: dict[str, dict[str, list[float]]] = {}
    for name in CONFIGS:
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        try:
            cell_steps(kc, 20)  # warm up
            steps[name] = cell_steps(kc, args.cells)
            prims[name] = primitives(kc)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    cold = {n: cold_phases(ksm, n, args.starts) for n in CONFIGS if n != "local"}
    text = report(steps, prims, cold, args.cells)
    print(text)
    if args.out:
        write_between_markers(Path(args.out), text)


START, END = "<!-- profile:start -->", "<!-- profile:end -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the generated part of ``path``; the hand-written reading around it stays."""
    old = path.read_text() if path.exists() else f"{START}\n{END}\n"
    head, _, rest = old.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{text}{END}{tail}")


if __name__ == "__main__":
    main()
