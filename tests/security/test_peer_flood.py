"""Another local user floods a kernel's host port with connections (issue 19, item 3).

The relay checks who owns each connecting socket. That check used to read all of
``/proc/net/tcp`` on the relay's one loop for every connection, so another user who holds
thousands of sockets (each a line of the table) and connects ~160 times a second stalled
the owner's cells for seconds. Here an unprivileged user made for the test does exactly
that (loopback only, for a bounded time) while the owner runs cells: the owner's cells
keep answering (p99 under 1 s), none of the attacker's connections reaches the kernel
(none receives a byte: the kernel's ZeroMQ socket greets every connection it gets), and
the relay holds no more descriptors afterwards than before.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import Kernel, wait_for_ready_pool
from tests.rootless import HostUser, create_user, remove_user

HOLD = 8000  # listening sockets the attacker holds (lines of /proc/net/tcp)
RATE = 160  # connections a second
SECONDS = 12

# Runs as the attacker (stdlib only): HOLD listeners, then RATE non-blocking connects a
# second to PORT for SECONDS; each connection is given 1 s to receive a byte, then closed.
FLOOD = r"""
import json, socket, sys, time
port, hold, rate, seconds = (int(a) for a in sys.argv[1:5])
held = []
for _ in range(hold):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1); held.append(s)
print("READY", flush=True)
sys.stdin.readline()
attempted = connected = got = 0
open_ = []
def settle(force):
    global connected, got
    now = time.monotonic()
    while open_ and (force or now - open_[0][0] >= 1.0):
        _, s = open_.pop(0)
        try:
            s.getpeername(); connected += 1
            if s.recv(1):
                got += 1
        except OSError:
            pass
        s.close()
start = time.monotonic()
while time.monotonic() - start < seconds:
    s = socket.socket(); s.setblocking(False)
    s.connect_ex(("127.0.0.1", port)); attempted += 1
    open_.append((time.monotonic(), s))
    settle(False)
    time.sleep(max(0.0, start + attempted / rate - time.monotonic()))
time.sleep(1.0)
settle(True)
print(json.dumps({"attempted": attempted, "connected": connected, "got_bytes": got}), flush=True)
"""


@pytest.fixture
def attacker() -> Iterator[HostUser]:
    user = create_user("skflood")
    try:
        yield user
    finally:
        left = remove_user(user)
        assert not left, f"the attacker's processes were left: {left}"


def flood(
    who: HostUser | None, port: int, hold: int, rate: int, seconds: int
) -> subprocess.Popen[str]:
    """The flood as ``who`` (None: this test's own user, the control), started holding its
    sockets; it begins when told (:func:`go`)."""
    argv = ["/usr/bin/python3", "-c", FLOOD, *(str(v) for v in (port, hold, rate, seconds))]
    if who is not None:
        proc = who.popen(*argv)
    else:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, int]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def our_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_connection_flood_from_another_user_does_not_stall_the_owners_cells(
    start_kernel: Callable[..., Kernel], attacker: HostUser, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = start_kernel()
    port = int(kernel.km.get_connection_info()["shell_port"])
    # Control: the same program as the kernel's owner is greeted by the kernel.
    control = flood(None, port, 0, 5, 1)
    go(control)
    assert result(control, 30)["got_bytes"] >= 1
    assert kernel.value("print(1)") == 1
    # The warm pool refills after this kernel's claim: its new sandbox's descriptors are
    # this process's too, so they are counted before, not during, the flood.
    wait_for_ready_pool(kernel)
    time.sleep(1.5)  # the control's connections have ended
    fds_before = our_fds()
    attack = flood(attacker, port, HOLD, RATE, SECONDS)
    latencies: list[float] = []
    with caplog.at_level(logging.WARNING, "sandbox_kernel"):
        go(attack)
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            t = time.monotonic()
            assert kernel.value("print(6 * 7)", timeout=60) == 42
            latencies.append(time.monotonic() - t)
            time.sleep(0.05)
        seen = result(attack, 120)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    assert seen["attempted"] >= RATE * SECONDS * 0.5, seen  # the flood really ran
    assert seen["got_bytes"] == 0, f"another user's connections reached the kernel: {seen}"
    assert p99 < 1.0, f"the owner's cells stalled under the flood: p99 {p99:.2f} s of {latencies}"
    assert kernel.value("print(6 * 7)") == 42
    deadline = time.monotonic() + 10
    while our_fds() > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # refused connections still waiting for their check
    assert our_fds() <= fds_before + 2, (fds_before, our_fds())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= SECONDS / 10 + 2, refusals  # a line per 10 s, not per connection
