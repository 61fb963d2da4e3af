"""A stand-in Jupyter process for the host-bounds tests (run as a subprocess).

    python -m tests.security.host_harness SCENARIO BACKEND OUT.json

It starts two kernels with jupyter_client's KernelManager, as a Jupyter server does: a
victim and an attacker whose agent carries the test backdoor (``hostile.py``), so the
attacker's kernel code holds the agent's pipe and can stop the agent. It then runs one
attack from inside the attacker's sandbox while a thread keeps executing cells on the
victim, and writes a JSON report: this process's peak memory growth, file descriptors
and listening ports before and after, the log records that name the attacker, the
victim's answers, and whether the attacker's sandbox ended. The test (test_host_bounds)
judges the report; this process only observes.

Its stderr is the server's stderr: the test points it at a file, or at a pipe it never
reads (a stalled terminal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

import sandbox_kernel.boot
import sandbox_kernel.bundle
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.relay.thread import RelayThread
from tests.helpers import (
    BACKEND_CONFIGS,
    TEST_RUNTIME,
    Kernel,
    ready_kernel,
    socket_inodes,
    tcp_listeners,
)
from tests.security.hostile import KERNEL_PRELUDE, backdoored_payload

MiB = 2**20
# Attacks that freeze the agent first: their cell's reply can never come back (the agent
# relays it), so the harness does not wait for it, only for the host's reaction: the
# attacker's end, or this many seconds.
FROZEN = {"backlog": 60.0, "log-injection": 60.0, "expose-burst": 8.0}

# Attacker kernelspec settings per scenario (the victim keeps the defaults).
ATTACKER_CONFIG: dict[str, dict[str, Any]] = {
    "backlog": {},
    "log-injection": {},
    "expose-burst": {"max_runtime_ports": 4},
    "console-flood": {"console_limit": "256k"},
    "big-message": {"max_message_size": "16m"},
    "big-multipart": {"max_message_size": "16m"},
}

# The attack, run as one cell in the attacker's kernel (after KERNEL_PRELUDE).
ATTACKS = {
    # Stop the agent, then ask and ask: every request earns a reply queued for a sandbox
    # that no longer reads. 96 MiB of requests.
    "backlog": """
stop_agent()
batch = b"".join(frame({"op": "export_begin", "req": i, "name": "." + "x" * 150, "size": 1})
                 for i in range(4096))
sent = 0
try:
    while sent < 96 * 2**20:
        write_all(batch)
        sent += len(batch)
except OSError as e:
    print("pipe closed after", sent, e)
print("sent", sent)
""",
    # Forged error messages with terminal escapes and fake log lines, 10,000 of them.
    "log-injection": """
stop_agent()
fake = "\\x1b[2J\\x1b[31m\\n[E 2026-11-30 10:00:00.000 ServerApp] FAKE: all kernels compromised\\n"
batch = b"".join(frame({"op": "error", "message": fake * 20}) for _ in range(1000))
try:
    for _ in range(10):
        write_all(batch)
except OSError as e:
    print("pipe closed", e)
""",
    # 1,500 expose requests in one write (each for another port), far over the limit.
    "expose-burst": """
stop_agent()
write_all(b"".join(frame({"op": "expose", "req": 10**6 + i, "port": 20000 + i}) for i in range(1500)))
""",
    # 64 MiB of escape sequences and fake log lines on the kernel's own stdout (not its
    # cell output: the descriptor ipykernel keeps of its original stdout).
    "console-flood": """
import sys, os as _o
fd = sys.stdout._original_stdstream_copy
chunk = b"\\x1b[2J\\x1b]0;owned\\x07[E 2026-11-30 ServerApp] FAKE LINE\\r\\n" * 2048
total = 0
while total < 64 * 2**20:
    view = memoryview(chunk)
    while view:
        view = view[_o.write(fd, view):]
    total += len(chunk)
print("wrote", total)
""",
    # One 128 MiB iopub message (a client that subscribes holds it in full otherwise).
    "big-message": """
k = get_ipython().kernel
k.session.send(k.iopub_socket, "stream", {"name": "stdout", "text": "x" * (128 * 2**20)},
               parent=k.get_parent("shell"))
print("sent")
""",
    # One 48 MiB iopub message in four frames of 12 MiB (its buffers), each under the
    # maximum: the bound is on the message, which the client allocates whole.
    "big-multipart": """
k = get_ipython().kernel
k.session.send(k.iopub_socket, "stream", {"name": "stdout", "text": ""},
               parent=k.get_parent("shell"), buffers=[b"x" * (12 * 2**20)] * 4)
print("sent")
""",
}


def status() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def own_listeners() -> int:
    own = socket_inodes()
    return sum(1 for _addr, _port, inode in tcp_listeners() if inode in own)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def settled(scenario: str, attacker: Kernel, records: Records, attacker_id: str) -> bool:
    """Whether the host has taken in all the attack sent, by what the report will judge:
    the attacker ended (the attacks the host ends), every console byte received, the
    oversized message seen. (``expose-burst``'s frozen window is its whole attack.)"""
    if scenario in ("backlog", "log-injection"):
        return not attacker.km.is_alive()
    if scenario == "console-flood":
        console = attacker.km.provisioner.console  # type: ignore[union-attr]
        return bool(console.stats()["received"] >= 64 * MiB)
    if scenario in ("big-message", "big-multipart"):
        return any(
            "exceeds max_message_size" in line and attacker_id in line for line in records.lines
        )
    return True


def settle(scenario: str, attacker: Kernel, records: Records, attacker_id: str) -> None:
    """Until the host has taken in the attack (``settled``, at most a minute: the test then
    judges what it finds), then two turns of the relay loop, so that what it scheduled
    (closing an ended sandbox's pipes) has run before descriptors are counted."""
    deadline = time.monotonic() + 60
    while not settled(scenario, attacker, records, attacker_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(2):
        RelayThread.get().submit(asyncio.sleep(0)).result(timeout=60)


def main(scenario: str, backend: str, out: str) -> None:
    records = Records()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    kernels = Path(tempfile.mkdtemp(prefix="sk-harness-"))
    # "docker" is the default kernelspec, on SANDBOX_KERNEL_TEST_RUNTIME's runtime as elsewhere.
    config = BACKEND_CONFIGS.get(backend, {"runtime": TEST_RUNTIME} if backend == "docker" else {})
    base = {"image": DEFAULT_IMAGE, "pool_size": 0, **config}
    for name, extra in (("victim", {}), ("attacker", ATTACKER_CONFIG[scenario])):
        (kernels / name).mkdir()
        spec = build_kernelspec({**base, **extra})
        (kernels / name / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])

    armed = [True]
    real_payload = sandbox_kernel.bundle.agent_payload  # what boot.py imported

    def payload(
        escaped_stdin: bool = True,
        kernel_user: str | None = None,
        kernel_rlimits: tuple[tuple[str, int], ...] = (),
    ) -> bytes:
        if armed[0]:
            return backdoored_payload(escaped_stdin, kernel_user, kernel_rlimits)
        return real_payload(escaped_stdin, kernel_user, kernel_rlimits)

    sandbox_kernel.boot.agent_payload = payload  # type: ignore[attr-defined,assignment]
    attacker = ready_kernel(ksm, "attacker", timeout=120)
    armed[0] = False
    victim = ready_kernel(ksm, "victim", timeout=120)
    report: dict[str, Any] = {"scenario": scenario, "backend": backend}
    try:
        attacker_id = str(attacker.km.kernel_id)
        for k in (attacker, victim):
            assert k.value("print(1 + 1)") == 2
        report["attacker_prelude"] = attacker.run(KERNEL_PRELUDE)[0]["status"]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS: the peak from here on is the attack's
        before = status()
        report["fds_before"] = len(os.listdir("/proc/self/fd"))
        report["listeners_before"] = own_listeners()
        logged_before = len(records.lines)

        answers: list[float] = []
        failures: list[str] = []
        done = threading.Event()

        def ping() -> None:
            n = 0
            while not done.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    if victim.value(f"print({n} * 2)", timeout=60) != n * 2:
                        failures.append(f"wrong answer to ping {n}")
                except Exception as exc:
                    failures.append(f"ping {n}: {exc!r}")
                answers.append(time.monotonic() - t0)
                done.wait(0.2)

        pinger = threading.Thread(target=ping, daemon=True)
        pinger.start()
        t0 = time.monotonic()
        if scenario in FROZEN:
            attacker.kc.execute(ATTACKS[scenario])
            deadline = time.monotonic() + FROZEN[scenario]
            while time.monotonic() < deadline and attacker.km.is_alive():
                time.sleep(0.2)
            report["attack"] = {"status": "sent"}
        else:
            # Wait for the shell reply only: iopub may be the connection the host resets.
            msg_id = attacker.kc.execute(ATTACKS[scenario])
            try:
                while True:
                    reply = attacker.kc.get_shell_msg(timeout=240)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                report["attack"] = {"status": reply["content"].get("status")}
            except Exception as exc:
                report["attack"] = {"status": "no reply", "output": repr(exc)[:2000]}
        report["attack_seconds"] = time.monotonic() - t0
        settle(scenario, attacker, records, attacker_id)
        # The victim answers after the attack too (and at least twice in all): pings are
        # counted, not timed, so a quick attack gets the same check as a slow one.
        wanted, deadline = max(len(answers) + 1, 2), time.monotonic() + 180
        while len(answers) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        pinger.join(timeout=120)
        after = status()
        report["hwm_growth"] = after["VmHWM"] - before["VmRSS"]
        report["rss_growth"] = after["VmRSS"] - before["VmRSS"]
        report["fds_after"] = len(os.listdir("/proc/self/fd"))
        report["listeners_after"] = own_listeners()
        report["attacker_alive"] = attacker.km.is_alive()
        report["victim_pings"] = len(answers)
        report["victim_slowest"] = max(answers, default=0.0)
        report["victim_failures"] = failures
        report["victim_after"] = victim.value("print(21 * 2)")
        report["console"] = attacker.km.provisioner.console.stats()  # type: ignore[union-attr]
        report["log"] = [line for line in records.lines[logged_before:] if attacker_id in line]
        report["attacker_id"] = attacker_id
    finally:
        for k in (attacker, victim):
            try:
                k.kc.stop_channels()
                k.km.shutdown_kernel(now=True)
            except Exception as exc:
                report.setdefault("shutdown_errors", []).append(repr(exc))
        shutil.rmtree(kernels, ignore_errors=True)
        Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
