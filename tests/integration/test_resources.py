"""Resource abuse is contained: the abused sandbox hits its own limit, while the host,
the relay and a second kernel keep answering; the abused kernel recovers. (A liveness
check, not a timing one: how fast the second kernel answers meanwhile is a number for the
benchmark, not a test.)

The limits come from the kernelspec variants in tests/conftest.py: ``sandbox-python``
(2 GiB, 1 CPU, derived nproc 64) and ``sandbox-small`` (512 MiB, 64 MiB /tmp, nproc 32).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import docker

from tests.helpers import Kernel, wait_until

# A probe unanswered this long means the second kernel is stuck, not slow.
PROBE_TIMEOUT = 30.0


@contextmanager
def watch_responsiveness(other: Kernel) -> Iterator[list[float]]:
    """While the body runs, run a trivial cell in ``other`` again and again; yields the
    round trips (for the failure message), records any probe that fails."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                reply = other.kc.execute_interactive("1", timeout=PROBE_TIMEOUT)
                ok = reply["content"]["status"] == "ok"
            except Exception:
                ok = False
            latencies.append(time.monotonic() - t0 if ok else float("inf"))
            stop.wait(0.2)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(timeout=60)
    assert latencies, "the second kernel never answered"


def assert_responsive(latencies: list[float]) -> None:
    """Every probe of the second kernel was answered (none stuck for PROBE_TIMEOUT)."""
    stuck = [t for t in latencies if t == float("inf")]
    assert not stuck, f"the second kernel stopped answering ({len(stuck)} of {len(latencies)})"


def wait_for_output(kernel: Kernel, msg_id: str, text: str, timeout: float = 60) -> None:
    """Until the cell ``msg_id`` of ``kernel`` has printed ``text``."""
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=timeout)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and text in msg["content"]["text"]
        ):
            return


def test_fork_bomb_gets_eagain(start_kernel: Callable[..., Kernel]) -> None:
    victim, other = start_kernel(), start_kernel()
    bomb = (
        "import os, time, json, signal, resource\n"
        "start = time.monotonic(); errors = []; kids = []\n"
        "while time.monotonic() - start < 20:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        errors.append(e.errno); break\n"
        "    if pid == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    kids.append(pid)\n"
        "result = {'kids': len(kids), 'errno': errors[0] if errors else None,\n"
        "          'limit': resource.getrlimit(resource.RLIMIT_NPROC)[0]}\n"
        "for pid in kids:\n"
        "    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)\n"
        "print(json.dumps(result))\n"
    )
    with watch_responsiveness(other) as latencies:
        result = victim.value(bomb, timeout=120)
    assert result["errno"] == 11, result  # EAGAIN from RLIMIT_NPROC, not an OOM kill
    assert 0 < result["kids"] < result["limit"]
    assert_responsive(latencies)
    assert victim.value("print(40 + 2)") == 42  # the abused kernel still works


def test_memory_bomb_is_killed_and_restarted(start_kernel: Callable[..., Kernel]) -> None:
    victim = start_kernel("sandbox-small")
    other = start_kernel()
    first = victim.sandbox_id
    with watch_responsiveness(other) as latencies:
        victim.kc.execute(
            "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))\n"
        )
        wait_until(lambda: not victim.km.is_alive(), 120, "the memory-bombed kernel to die")
    assert_responsive(latencies)
    # A blocking KernelManager has no restarter loop: restart as the restarter would.
    victim.km.restart_kernel(now=True)
    victim.kc.wait_for_ready(timeout=60)
    assert victim.sandbox_id != first
    assert victim.value("print(1 + 1)") == 2


def test_memory_bomb_is_explained_in_the_notebook(start_kernel: Callable[..., Kernel]) -> None:
    """The notebook learns why its kernel died: before any restart, an error on the
    kernel's IOPub, signed with the kernel's key (jupyter_client checks it, or the client
    drops the message), parented to the cell that ran the bomb, names the memory limit."""
    from sandbox_kernel.provisioner import SandboxProvisioner

    victim = start_kernel("sandbox-small")
    prov = victim.km.provisioner
    assert isinstance(prov, SandboxProvisioner)
    msg_id = victim.kc.execute(
        "print('bombing', flush=True)\nchunks = []\n"
        "while True:\n    chunks.append(bytearray(32 * 1024 * 1024))\n"
    )
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "no word on IOPub of why the kernel died"
        try:
            msg = victim.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            victim.km.is_alive()  # as the restarter (or nbclient) polls
            continue
        if msg["msg_type"] == "error" and msg["parent_header"].get("msg_id") == msg_id:
            break
    assert msg["content"]["ename"] == "SandboxKernelStopped", msg["content"]
    assert msg["content"]["evalue"] == (
        "The sandboxed kernel was stopped: it hit its memory limit (512m)"
    )
    wait_until(lambda: not victim.km.is_alive(), 120, "the memory-bombed kernel to die")
    assert prov.end_reason == "it hit its memory limit (512m)"  # what `run` prints


def test_disk_fill_stops_at_tmpfs_cap(start_kernel: Callable[..., Kernel]) -> None:
    victim, other = start_kernel("sandbox-small"), start_kernel()
    fill = (
        "import json, os\n"
        "written = 0; err = None\n"
        "block = b'x' * (1 << 20)\n"
        "try:\n"
        "    with open('/tmp/fill', 'wb') as f:\n"
        "        while written < (1 << 30):\n"
        "            f.write(block); f.flush(); written += len(block)\n"
        "except OSError as e:\n"
        "    err = e.errno\n"
        "os.remove('/tmp/fill')\n"
        "print(json.dumps({'written_mib': written >> 20, 'errno': err}))\n"
    )
    with watch_responsiveness(other) as latencies:
        result = victim.value(fill, timeout=120)
    assert result["errno"] == 28, result  # ENOSPC
    assert result["written_mib"] <= 64, result
    assert_responsive(latencies)


def test_cpu_spin_bounded_by_cpu_limit(
    start_kernel: Callable[..., Kernel], docker_client: docker.DockerClient
) -> None:
    victim, other = start_kernel(), start_kernel()
    assert victim.sandbox_id is not None
    container = docker_client.containers.get(victim.sandbox_id)
    spin = (
        "import multiprocessing as mp, time\n"
        "def burn(seconds):\n"
        "    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n"
        "        pass\n"
        "procs = [mp.get_context('fork').Process(target=burn, args=(8,)) for _ in range(4)]\n"
        "[p.start() for p in procs]\n"
        "print('spinning', flush=True)\n"
        "[p.join() for p in procs]\n"
        "print(len(procs))\n"
    )
    with watch_responsiveness(other) as latencies:
        msg_id = victim.kc.execute(spin)
        wait_for_output(victim, msg_id, "spinning")  # the spinners run
        s1 = container.stats(stream=False)
        time.sleep(4)  # the measurement window (not a wait for anything)
        s2 = container.stats(stream=False)
    used_ns = (
        s2["cpu_stats"]["cpu_usage"]["total_usage"] - s1["cpu_stats"]["cpu_usage"]["total_usage"]
    )
    elapsed_ns = _read_delta_ns(s1["read"], s2["read"])
    cpus_used = used_ns / elapsed_ns
    assert cpus_used > 0.5, f"the spin did not run ({cpus_used:.2f} CPUs): the test proves nothing"
    assert cpus_used < 1.25, f"sandbox used {cpus_used:.2f} CPUs with cpu_limit 1"
    assert_responsive(latencies)


def _read_delta_ns(a: str, b: str) -> int:
    from datetime import datetime

    def parse(ts: str) -> datetime:
        head, _, frac = ts.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")

    return int((parse(b) - parse(a)).total_seconds() * 1e9)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_huge_output_to_a_stalled_client_is_bounded(start_kernel: Callable[..., Kernel]) -> None:
    """A cell prints 512 MiB to an iopub subscriber (another process) that never reads.
    The relay (in this process) must not buffer it: credit runs out, the agent stops
    reading, and the kernel's ZeroMQ socket drops what its high-water mark cannot hold."""
    victim, other = start_kernel(), start_kernel()
    # This process keeps only the relay: no iopub subscriber of its own.
    victim.kc.stop_channels()
    shell = victim.km.client()
    shell.start_channels(iopub=False, stdin=False, hb=False)
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALLED_SUBSCRIBER, victim.km.connection_file],
        stdout=subprocess.PIPE,
    )
    try:
        assert stalled.stdout is not None
        # Subscribed: the baseline is taken now (an earlier one would only be stricter).
        assert stalled.stdout.readline().strip() == b"subscribed"
        rss_before = _rss_mib()
        with watch_responsiveness(other) as latencies:
            msg_id = shell.execute(
                "import sys\nchunk = 'y' * (1 << 20)\n"
                "for _ in range(512):\n    sys.stdout.write(chunk); sys.stdout.flush()\n"
                "print('done')"
            )
            reply = shell.get_shell_msg(timeout=300)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"
        growth = _rss_mib() - rss_before
        assert growth < 100, f"the relay's process grew by {growth:.0f} MiB"
        assert_responsive(latencies)
    finally:
        stalled.kill()
        stalled.wait()
        shell.stop_channels()
    victim.kc = victim.km.client()
    victim.kc.start_channels()
    victim.kc.wait_for_ready(timeout=60)
    assert victim.value("print(7 * 6)") == 42


# Subscribes to iopub (a complete ZeroMQ handshake), then never reads.
STALLED_SUBSCRIBER = """
import json, sys, time, zmq
info = json.load(open(sys.argv[1]))
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 4)
sock.setsockopt(zmq.RCVBUF, 4096)
sock.setsockopt(zmq.SUBSCRIBE, b"")
sock.connect("tcp://127.0.0.1:%d" % info["iopub_port"])
sock.recv_multipart()  # the first message proves the subscription works
print("subscribed", flush=True)
time.sleep(3600)
"""


def test_host_pid_count_unaffected_by_fork_bomb(start_kernel: Callable[..., Kernel]) -> None:
    """The host sees a bounded number of processes from a fork-bombing sandbox."""
    victim = start_kernel()
    before = len([p for p in os.listdir("/proc") if p.isdigit()])
    # Its children outlive the cell (until the sandbox ends): counted once it replied. Each
    # becomes a small `sleep`: a forked Python each would be bounded by memory_limit before
    # nproc_limit (on the current gVisor 64 of them reached the 2g limit once in CI).
    forked = victim.value(
        "import os, time\n"
        "n = 0\n"
        "for _ in range(1000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.execv('/bin/sleep', ['sleep', '600'])\n"
        "    except OSError:\n"
        "        break\n"
        "    n += 1\n"
        "print(n)\n"
    )
    assert forked > 0, "the cell forked nothing: the test proves nothing"
    during = len([p for p in os.listdir("/proc") if p.isdigit()])
    assert during - before < 200, f"host process count grew by {during - before}"
