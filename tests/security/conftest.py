"""Fixtures of the security suite: a LAN host in a network namespace of our own (TCP, UDP,
DNS and ping, over IPv4 and IPv6), the host's own addresses, host-side listeners and an
abstract unix socket; and the end-of-session line counting the attacks tried.

Network safety: the only traffic these fixtures create goes to loopback, to this
machine's own addresses, or to the namespace created here (a /30 of 10.213.8.0/24 and a
/64 of fd5a:213:8::/48); every namespace and veth is removed by the fixture's finalizer.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# --------------------------------------------------------------------------------------
# A LAN host in a network namespace


_LAN_SERVER = r"""
import socket, struct, sys, threading
ADDR, ADDR6, PORT, ANSWER = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def dns_answer(q):
    end = 12
    while q[end]:
        end += q[end] + 1
    end += 5
    head = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180, 1, 1, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ANSWER)
    return head + q[12:end] + rr

def forever(fn):
    threading.Thread(target=fn, daemon=True).start()

def udp(family, addr, port, reply):
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((addr, port))
    def run():
        while True:
            data, peer = u.recvfrom(2048)
            try:
                u.sendto(reply(data), peer)
            except Exception:
                pass
    forever(run)

def tcp(family, addr, port, serve):
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    t.bind((addr, port))
    t.listen(16)
    def run():
        while True:
            c, _ = t.accept()
            try:
                c.settimeout(5)
                serve(c)
            except Exception:
                pass
            finally:
                c.close()
    forever(run)

def pong(c):
    c.sendall(b"tcp-pong")

def dns_tcp(c):
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = c.recv(4096)
        if not chunk:
            return
        data += chunk
    reply = dns_answer(data[2:])
    c.sendall(struct.pack("!H", len(reply)) + reply)

for family, addr in ((socket.AF_INET, ADDR), (socket.AF_INET6, ADDR6)):
    tcp(family, addr, PORT, pong)
    udp(family, addr, PORT, lambda d: b"udp-pong")
    tcp(family, addr, 53, dns_tcp)
    udp(family, addr, 53, dns_answer)
print("ready", flush=True)
sys.stdin.read()
"""


class LanHost:
    """A host on a LAN the sandbox must not reach: TCP/UDP echo on ``port``, DNS on 53,
    answering pings, on ``addr`` and ``addr6``.

    It lives on a /30 of 10.213.8.0/24 (and a /64 of fd5a:213:8::/48) not in use on this
    machine, so concurrent test runs do not collide.
    """

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        in_use = subprocess.run(
            ["ip", "-o", "addr", "show"], check=True, capture_output=True, text=True
        ).stdout
        free = [k for k in range(64) if f"10.213.8.{4 * k + 1}/" not in in_use]
        assert free, "no free /30 in 10.213.8.0/24"
        k = random.choice(free)
        self.host_addr, self.addr = f"10.213.8.{4 * k + 1}", f"10.213.8.{4 * k + 2}"
        self.host_addr6, self.addr6 = f"fd5a:213:8:{k:x}::1", f"fd5a:213:8:{k:x}::2"
        self.port = 8080
        self.dns_answer = self.addr
        self.proc: subprocess.Popen[str] | None = None

    @property
    def ns(self) -> str:
        return f"sksec-{self.tag}"

    @property
    def veth(self) -> str:
        return f"sksh{self.tag}"

    def start(self) -> None:
        def sh(*args: str) -> None:
            subprocess.run(args, check=True, capture_output=True, text=True)

        def in_ns(*args: str) -> None:
            sh("ip", "netns", "exec", self.ns, *args)

        sh("ip", "netns", "add", self.ns)
        sh(
            "ip",
            "link",
            "add",
            self.veth,
            "type",
            "veth",
            "peer",
            "name",
            "sksn0",
            "netns",
            self.ns,
        )
        sh("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.veth)
        sh("ip", "-6", "addr", "add", f"{self.host_addr6}/64", "dev", self.veth, "nodad")
        sh("ip", "link", "set", self.veth, "up")
        in_ns("ip", "addr", "add", f"{self.addr}/30", "dev", "sksn0")
        in_ns("ip", "-6", "addr", "add", f"{self.addr6}/64", "dev", "sksn0", "nodad")
        in_ns("ip", "link", "set", "sksn0", "up")
        in_ns("ip", "link", "set", "lo", "up")
        self.proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.ns, sys.executable, "-I", "-c", _LAN_SERVER),
                *(self.addr, self.addr6, str(self.port), self.dns_answer),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"the LAN host did not start: {line!r}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], check=False, capture_output=True)

    def tcp_answers(self, addr: str) -> bool:
        with socket.create_connection((addr, self.port), timeout=3) as s:
            return s.recv(16) == b"tcp-pong"


@pytest.fixture(scope="session")
def lan_host() -> Iterator[LanHost]:
    host = LanHost()
    try:
        host.start()
        for addr in (host.addr, host.addr6):
            assert host.tcp_answers(addr), (
                f"LAN host {addr} must be live or the tests prove nothing"
            )
        yield host
    finally:
        host.stop()


# --------------------------------------------------------------------------------------
# The host's own addresses and host-side servers


def host_addresses() -> list[str]:
    """This machine's global unicast addresses (no loopback, link-local, or test veths)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], check=True, capture_output=True, text=True)
    addrs = []
    for line in out.stdout.splitlines():
        fields = line.split()
        ifname, family, cidr = fields[1], fields[2], fields[3]
        if family not in ("inet", "inet6") or ifname.startswith(("sk", "lo")):
            continue
        if "tentative" in fields or "dadfailed" in fields:
            continue
        ip = ipaddress.ip_address(cidr.split("/")[0])
        if ip.is_loopback or ip.is_link_local or ip.is_multicast:
            continue
        addrs.append(str(ip))
    return addrs


def _shut(s: socket.socket) -> None:
    """Close a listening socket, waking a thread blocked in accept()."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class AcceptCounter:
    """Accepts (and closes) connections on listening sockets, counting them."""

    def __init__(self) -> None:
        self.accepted = 0

    def serve(self, s: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


class Listener(AcceptCounter):
    """TCP listeners on one port at several addresses; counts accepted connections."""

    def __init__(self, addrs: list[str]) -> None:
        super().__init__()
        self._socks: list[socket.socket] = []
        self.port = 0
        for attempt in range(20):
            try:
                self._bind_all(addrs)
                break
            except OSError:
                self.close()
                if attempt == 19:
                    raise
        for s in self._socks:
            self.serve(s)

    def _bind_all(self, addrs: list[str]) -> None:
        self._socks = []
        for addr in addrs:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            self._socks.append(s)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, self.port))
            s.listen(16)
            self.port = s.getsockname()[1]

    def close(self) -> None:
        for s in self._socks:
            _shut(s)
        self._socks = []
        self.port = 0


@pytest.fixture
def abstract_server() -> Iterator[tuple[str, AcceptCounter]]:
    """An abstract unix socket of the host: '\\0sk-test-<random>'. Yields (name, counter)."""
    name = f"sk-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(4)
    counter = AcceptCounter()
    counter.serve(server)
    try:
        yield name, counter
    finally:
        _shut(server)


# --------------------------------------------------------------------------------------
# End-of-session summary: how many attacks were tried, how many were blocked and how many
# ended as a documented gap of the default backend.

_ATTACK_TEST = "tests/security/test_attacks.py::test_attack["
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _ATTACK_TEST not in report.nodeid.replace(os.sep, "/"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from sandbox_kernel.security.expectations import gaps_of
    from tests.helpers import gvisor_release

    if not _outcomes:
        return
    gaps_now = gaps_of("docker", gvisor_release("docker"))
    ids = {n: n.split("[", 1)[1].rstrip("]") for n in _outcomes}
    tried = len(_outcomes)
    wrong = sorted(ids[n] for n, outcome in _outcomes.items() if outcome != "passed")
    gaps = sum(1 for n in _outcomes if ids[n] in gaps_now and ids[n] not in wrong)
    line = (
        f"sandbox attack suite: {tried} attacks tried, {tried - len(wrong) - gaps} blocked, "
        f"{gaps} documented gaps confirmed"
    )
    if wrong:
        line += f"; NOT as documented or not run: {', '.join(wrong)}"
    terminalreporter.write_sep("=", line, bold=True, red=bool(wrong), green=not wrong)
