"""How an attack of :data:`sandbox_kernel.security.ATTACKS` is attempted in a sandboxed
kernel, shared by every attack suite of tests/security (the default backend, the others,
rootless runsc, restored snapshots): :func:`attempt` renders it with what its provider
(below, one per attack with ``needs``) set up on the host, runs it ON THE HOST first where
it must find its way open (``blocked: false``), so a pass inside the sandbox cannot be
vacuous, then inside the kernel; :func:`check_gap_detail` holds a documented gap to its
pinned look. Host-side runs only read files and talk to loopback, this machine's own
addresses and the test's own network namespace.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.policy import build_policy
from sandbox_kernel.security import Attack, render
from sandbox_kernel.security.expectations import GAP_DETAILS, GAPS
from tests.helpers import REPO, Kernel
from tests.security.conftest import AcceptCounter, LanHost, Listener, host_addresses


@dataclass
class Setup:
    params: dict[str, Any] = field(default_factory=dict)
    kernel: Kernel | None = None  # None: the module's shared kernel
    control: bool = True  # run the rendered code on the host first; it must not be blocked
    after_control: Callable[[], None] = lambda: None


Provider = Callable[[pytest.FixtureRequest], AbstractContextManager[Setup]]
PROVIDERS: dict[str, Provider] = {}


def provides(attack_id: str) -> Callable[[Callable[..., Iterator[Setup]]], Provider]:
    def register(fn: Callable[..., Iterator[Setup]]) -> Provider:
        assert attack_id not in PROVIDERS, attack_id
        provider = contextmanager(fn)
        PROVIDERS[attack_id] = provider
        return provider

    return register


def settled(count: Callable[[], int], expected: int, timeout: float = 3.0) -> int:
    """``count()`` once it reaches ``expected`` or ``timeout`` passes (accept threads lag)."""
    deadline = time.monotonic() + timeout
    while count() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and a moment more, so a late extra connection is counted too
    return count()


def run_on_host(code: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"host control run failed: {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------
# Providers


@provides("fs-host-markers")
def _markers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    tag = uuid.uuid4().hex
    dirs = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path.home(), REPO, tmp_path]
    markers = [d / f"sk-marker-{tag}" for d in dirs if d.is_dir()]
    try:
        for marker in markers:
            marker.write_text("host secret")
        known = [
            REPO / "pyproject.toml",
            Path("/var/lib/docker"),
            Path("/etc/docker"),
            Path("/var/run/docker.sock"),
            Path(sys.executable),
        ]
        paths = [str(p) for p in markers + [p for p in known if p.exists()]]
        yield Setup({"paths": paths})
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


@provides("fs-tmpfs-caps")
def _tmpfs_caps(request: pytest.FixtureRequest) -> Iterator[Setup]:
    policy = build_policy(image=DEFAULT_IMAGE)  # what the default kernelspec asks for
    yield Setup({"tmp_bytes": policy.tmp_bytes, "home_bytes": policy.home_bytes}, control=False)


@provides("net-lan-host")
def _lan(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"addr": lan.addr, "addr6": lan.addr6, "port": lan.port})


@provides("net-dns-query")
def _dns(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"server": lan.addr, "qname": f"sk-{uuid.uuid4().hex[:8]}.test"})


@provides("net-icmp-echo")
def _icmp(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"addr": lan.addr, "addr6": lan.addr6})


def _listening(
    addrs: list[str], targets: int, params: Callable[[Listener], dict[str, Any]]
) -> Iterator[Setup]:
    listener = Listener(addrs)
    try:

        def accepted() -> int:
            return listener.accepted

        def after_control() -> None:
            got = settled(accepted, targets)
            assert got == targets, f"control: {targets} host connections expected, {got} arrived"

        yield Setup(params(listener), after_control=after_control)
        assert settled(accepted, targets) == targets, (
            "a connection from the sandbox reached the host"
        )
    finally:
        listener.close()


@provides("net-host-addresses")
def _host_addrs(request: pytest.FixtureRequest) -> Iterator[Setup]:
    addrs = host_addresses()
    assert addrs, "this machine has no global address to test"
    yield from _listening(
        ["0.0.0.0", "::"], len(addrs), lambda lst: {"addrs": addrs, "port": lst.port}
    )


@provides("net-host-loopback")
def _host_loopback(request: pytest.FixtureRequest) -> Iterator[Setup]:
    # three targets: 127.0.0.1, ::1 and ::ffff:127.0.0.1 (which lands on the IPv4 listener)
    yield from _listening(["127.0.0.1", "::1"], 3, lambda lst: {"port": lst.port})


@provides("net-userns-egress")
def _userns_egress(request: pytest.FixtureRequest) -> Iterator[Setup]:
    """The LAN host and host loopback listeners; the control (a clone3 user namespace on
    the host, sharing its network) reaches both loopback listeners once each."""
    lan: LanHost = request.getfixturevalue("lan_host")
    yield from _listening(
        ["127.0.0.1", "::1"],
        2,
        lambda lst: {
            "addr": lan.addr,
            "addr6": lan.addr6,
            "port": lan.port,
            "loopback_port": lst.port,
        },
    )


@provides("net-abstract-unix")
def _abstract(request: pytest.FixtureRequest) -> Iterator[Setup]:
    server: tuple[str, AcceptCounter] = request.getfixturevalue("abstract_server")
    name, counter = server

    def accepted() -> int:
        return counter.accepted

    def after_control() -> None:
        assert settled(accepted, 1) == 1, "control: the host could not connect to its own socket"

    yield Setup({"name": name}, after_control=after_control)
    assert settled(accepted, 1) == 1, "the sandbox connected to the host's abstract socket"


@provides("info-hostname")
def _hostname(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup({"host_hostname": socket.gethostname()})


@provides("info-host-resolver")
def _resolvers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    words = Path("/etc/resolv.conf").read_text().split()
    servers = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "nameserver"]
    assert servers, "the host has no nameserver in /etc/resolv.conf: nothing to look for"
    yield Setup({"host_resolvers": servers})


@provides("info-kernel-release")
def _release(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup({"host_release": os.uname().release})


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@provides("info-host-identifiers")
def _identifiers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup(
        {
            "host_boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "host_machine_id": _read("/etc/machine-id"),
            "host_cmdline": _read("/proc/cmdline"),
        }
    )


@provides("info-server-env")
def _server_env(request: pytest.FixtureRequest) -> Iterator[Setup]:
    token = f"planted-{uuid.uuid4().hex}"
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name in ("JUPYTERHUB_API_TOKEN", "SK_PLAIN_SETTING", "JPY_API_TOKEN", "DOCKER_AUTH"):
        monkeypatch.setenv(name, token)
    start_kernel: Callable[..., Kernel] = request.getfixturevalue("start_kernel")
    yield Setup({"token_hex": token.encode().hex()}, kernel=start_kernel())


def _host_pids() -> list[list[object]]:
    """[pid, argv[0]] of this test process and of the container daemons on the host."""
    wanted = {"dockerd", "containerd", "runsc-sandbox"}
    pids = [os.getpid()]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            comm = _read(str(entry / "comm"))
            if comm in wanted:
                wanted.discard(comm)
                pids.append(int(entry.name))
    out: list[list[object]] = []
    for pid in pids:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        out.append([pid, argv0])
    return out


@provides("info-host-pids")
def _pids(request: pytest.FixtureRequest) -> Iterator[Setup]:
    pids = _host_pids()
    assert len(pids) >= 2, f"expected the test runner and dockerd on the host: {pids}"
    yield Setup({"pids": pids})


@provides("info-host-sockets")
def _sockets(request: pytest.FixtureRequest) -> Iterator[Setup]:
    name, _counter = request.getfixturevalue("abstract_server")
    path = f"/tmp/sk-sock-{uuid.uuid4().hex[:12]}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(1)
    listener = Listener(["0.0.0.0"])
    try:
        yield Setup({"port": listener.port, "unix_names": ["@" + name, path]})
    finally:
        listener.close()
        unix.close()
        os.unlink(path)


@contextmanager
def _self_contained(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup(control=False)


def attempt(attack: Attack, request: pytest.FixtureRequest, kernel: Kernel) -> dict[str, Any]:
    """Run ``attack`` in ``kernel`` (or the provider's own kernel) after its host-side
    control proved the target is there; return the verdict from inside."""
    provider = PROVIDERS.get(attack.id, _self_contained)
    with provider(request) as setup:
        code = render(attack, **setup.params)
        if setup.control:
            control = run_on_host(code)
            assert control["blocked"] is False, (
                f"control: from the host, {attack.id} should find its target, but: "
                f"{control['detail']}"
            )
            setup.after_control()
        content, text = (setup.kernel or kernel).run(code, timeout=180)
        assert content["status"] == "ok", f"{attack.id} crashed inside the sandbox:\n{text}"
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    assert set(result) == {"blocked", "detail"}, result
    return result


def check_gap_detail(backend: str, attack_id: str, detail: str) -> None:
    """A gap whose look GAP_DETAILS pins must look exactly so: a further weakening behind it
    (e.g. the agent's memory readable, besides its maps) fails the test."""
    pattern = GAP_DETAILS.get(backend, {}).get(attack_id)
    if pattern is not None:
        assert re.fullmatch(pattern, detail), (
            f"backend {backend}: {attack_id} sees more (or other) than its documented gap "
            f"({GAPS[backend][attack_id]}). Observed: {detail}"
        )
