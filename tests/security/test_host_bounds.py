"""The host side of the relay under attack: a sandbox that holds the agent's pipe (and
can stop the agent) must not be able to hurt the Jupyter process or another kernel.

Each test runs ``host_harness.py`` (a stand-in Jupyter process with a victim kernel and
an attacker kernel, real sandboxes, real jupyter_client) for one attack, and checks the
bounds that docs/security.md states: the process's peak memory, its descriptors and
listening ports, what reaches its log and its stderr; the victim keeps answering; where
the attack is one the host ends, only the attacker's sandbox ends.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, Kernel, documented

MiB = 2**20
# docs/security.md, "Host-side bounds": relayed connections a sandbox may hold.
MAX_RELAYED = documented("security.md", r"\| relayed connections \| at most (\d+) per sandbox")
EVERY_BACKEND = ["docker", "runsc", "docker-runc", "bwrap", "firejail"]
GVISOR_AND_PIPES = ["docker", "runsc", "bwrap"]


def harness(
    scenario: str, backend: str, tmp_path: Path, *, stalled_stderr: bool = False
) -> tuple[dict[str, Any], bytes]:
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tests.security.host_harness", scenario, backend, str(out)]
    if stalled_stderr:
        # The server's stderr is a pipe nobody reads: its buffer fills at once.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            code = proc.wait(timeout=480)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = b""
    else:
        with (tmp_path / "stderr").open("wb") as f:
            done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f, timeout=480)
        code = done.returncode
        err = (tmp_path / "stderr").read_bytes()
    assert code == 0, err[-3000:].decode("utf-8", "replace")
    report = json.loads(out.read_text())
    assert report["attacker_prelude"] == "ok", report
    return report, err


def assert_victim_fine(report: dict[str, Any]) -> None:
    assert report["victim_failures"] == [], report
    assert report["victim_pings"] >= 2, report
    assert report["victim_after"] == 42, report


def assert_log_clean(report: dict[str, Any], most: int) -> None:
    """At most ``most`` records name the attacker; none carries a control character."""
    assert len(report["log"]) <= most, report["log"]
    for line in report["log"]:
        assert len(line) <= 2500, line[:300]
        assert not any(ord(c) < 32 or ord(c) == 127 for c in line), repr(line[:300])


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_a_sandbox_that_stops_reading_is_ended_at_the_backlog_bound(
    backend: str, tmp_path: Path
) -> None:
    report, _ = harness("backlog", backend, tmp_path)
    assert not report["attacker_alive"], report
    assert any("stopped reading its pipe" in line for line in report["log"]), report["log"]
    # 96 MiB of requests, each answered: the replies queued stop at MAX_PIPE_BACKLOG (8 MiB).
    assert report["hwm_growth"] < 48 * MiB, report
    # The ended sandbox's pipe and connections are closed (its ports stay until shutdown).
    assert report["fds_after"] <= report["fds_before"] + 2, report
    assert_victim_fine(report)
    assert_log_clean(report, 4)


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_forged_errors_are_logged_once_escaped_and_end_the_sandbox(
    backend: str, tmp_path: Path
) -> None:
    report, _ = harness("log-injection", backend, tmp_path)
    assert not report["attacker_alive"], report
    assert any("agent error" in line for line in report["log"]), report["log"]
    assert any("a second error message" in line for line in report["log"]), report["log"]
    assert_log_clean(report, 3)
    assert_victim_fine(report)


@pytest.mark.parametrize("backend", GVISOR_AND_PIPES)
def test_a_burst_of_expose_requests_gets_at_most_max_runtime_ports(
    backend: str, tmp_path: Path
) -> None:
    report, _ = harness("expose-burst", backend, tmp_path)
    opened = report["listeners_after"] - report["listeners_before"]
    assert 1 <= opened <= 4, report  # the first requests got ports; the limit held
    # Beside those ports, a frozen sandbox holds at most MAX_RELAYED relayed connections
    # (clients reconnecting to it), each one socket of ours and one of the client's.
    assert report["fds_after"] <= report["fds_before"] + opened + 2 * MAX_RELAYED, report
    assert sum("exposed its port" in line for line in report["log"]) == opened, report["log"]
    assert_victim_fine(report)


def _relayed(sock: socket.socket) -> bool | None:
    """Whether the host relayed this connection into the sandbox (the kernel's ZeroMQ
    greeting came back), refused it (reset or closed), or None: not yet known."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return None
    except OSError:
        return False


def _connect_all(port: int, n: int) -> tuple[list[socket.socket], list[bool | None]]:
    """``n`` connections to the host's ``port``, and what became of each (at most two
    minutes to tell)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    states: list[bool | None] = [None] * n
    deadline = time.monotonic() + 120
    while None in states and time.monotonic() < deadline:
        states = [s if s is not None else _relayed(c) for s, c in zip(states, socks, strict=True)]
        time.sleep(0.1)
    return socks, states


def test_relayed_connections_stop_at_the_documented_bound(
    start_kernel: Callable[..., Kernel],
) -> None:
    """A client of the host opens more connections to a kernel's port than docs/security.md
    lets one sandbox hold: the host relays that many at most (the test's own client and
    manager among them) and resets the others at once; closed, they free their slots."""
    kernel = start_kernel()
    socks, states = _connect_all(kernel.km.hb_port, MAX_RELAYED + 16)
    try:
        relayed = states.count(True)
        assert None not in states, f"{states.count(None)} connections neither relayed nor reset"
        assert relayed <= MAX_RELAYED, f"{relayed} connections relayed into one sandbox"
        # The others are the test's: its client's five channels, its manager's control socket.
        assert relayed >= MAX_RELAYED - 6, f"only {relayed} relayed: not the bound that refused"
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 60
    while True:  # the slots come back once the sandbox has closed its ends
        more, again = _connect_all(kernel.km.hb_port, 1)
        more[0].close()
        if again == [True] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert again == [True], "closed connections did not free their slots"
    assert kernel.value("print(6 * 7)") == 42


def _console_lines(err: bytes, attacker_id: str) -> list[bytes]:
    return [
        line
        for line in err.splitlines()
        if line.startswith(b"[sandbox-kernel %s]" % attacker_id[:8].encode())
    ]


@pytest.mark.parametrize("backend", GVISOR_AND_PIPES)
def test_console_output_is_capped_escaped_and_prefixed(backend: str, tmp_path: Path) -> None:
    report, err = harness("console-flood", backend, tmp_path)
    assert report["attack"]["status"] == "ok", report
    lines = _console_lines(err, report["attacker_id"])
    assert lines, err[-2000:]
    # console_limit is 256k for this kernel: of 64 MiB written, at most that reached stderr.
    assert sum(len(line) + 1 for line in lines) <= 256 * 1024, len(err)
    assert report["console"]["dropped"] > 0 and report["console"]["received"] >= 60 * MiB
    assert b"\x1b" not in err and b"\x07" not in err and b"\r" not in err
    assert b"\\x1b[2J" in err  # shown, not obeyed
    assert_victim_fine(report)
    assert_log_clean(report, 2)


def test_a_stalled_server_stderr_blocks_no_kernel(tmp_path: Path) -> None:
    report, _ = harness("console-flood", "docker", tmp_path, stalled_stderr=True)
    assert report["attack"]["status"] == "ok", report
    assert report["console"]["dropped"] > 0
    assert_victim_fine(report)


@pytest.mark.parametrize("backend", GVISOR_AND_PIPES)
@pytest.mark.parametrize("scenario", ["big-message", "big-multipart"])
def test_a_message_over_max_message_size_never_reaches_the_client(
    scenario: str, backend: str, tmp_path: Path
) -> None:
    """max_message_size 16m: a 128 MiB message (one frame), and a 48 MiB message of four
    12 MiB frames (each under the maximum: the bound is per message, not per frame)."""
    report, _ = harness(scenario, backend, tmp_path)
    assert any("exceeds max_message_size" in line for line in report["log"]), report["log"]
    assert report["attack"]["status"] == "ok", report
    # The client never allocates the message.
    assert report["hwm_growth"] < 64 * MiB, report
    assert_victim_fine(report)
    assert_log_clean(report, 4)
