"""Integration fixtures: a real dockerd with runsc, the real image, real ipykernel.

Nothing here skips. If the daemon, the runsc runtime or the kernel image is
missing, every integration test fails with what to run (CI must never pass
without the sandbox).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.backends.docker import LABEL_KERNEL_ID, LABEL_MANAGED, LABEL_SERVER_PID
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec

REPO = Path(__file__).resolve().parents[2]
SETUP = "run `sudo scripts/quickstart.sh` (or `sandbox-kernel setup-host && sandbox-kernel image build`)"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        info = client.info()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker daemon: {exc}; {SETUP}")
    if "runsc" not in (info.get("Runtimes") or {}):
        pytest.fail(f"dockerd has no runsc runtime; {SETUP}")
    try:
        client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"kernel image {DEFAULT_IMAGE} is missing; {SETUP}")
    return client


def our_containers(client: docker.DockerClient, kernel_id: str | None = None) -> list[Any]:
    label = f"{LABEL_KERNEL_ID}={kernel_id}" if kernel_id else f"{LABEL_SERVER_PID}={os.getpid()}"
    return client.containers.list(all=True, filters={"label": [f"{LABEL_MANAGED}=1", label]})


def listening_ports() -> dict[int, str]:
    """port -> local address (hex, as in /proc/net/tcp) of every TCP listener on the host."""
    out: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, port = fields[1].split(":")
                if fields[3] == "0A":  # LISTEN
                    out[int(port, 16)] = addr
    return out


@pytest.fixture(scope="session")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernels folder with the sandboxed kernelspec and variants used by tests."""
    root = tmp_path_factory.mktemp("kernels")
    variants = {
        "sandbox-python": {},
        "sandbox-small": {
            "memory_limit": "256m",
            "tmp_size": "64m",
            "home_size": "64m",
            "nproc_limit": 64,
            "pids_limit": 512,
        },
    }
    for name, config in variants.items():
        (root / name).mkdir()
        spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (root / name / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="session")
def ksm(kernel_dirs: Path) -> KernelSpecManager:
    return KernelSpecManager(kernel_dirs=[str(kernel_dirs)])


class Kernel:
    """A started sandboxed kernel with a blocking client."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc

    @property
    def container_id(self) -> str | None:
        return self.km.provisioner._container_id  # type: ignore[union-attr]

    def run(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
        """Execute ``code``; return (reply content, stdout+stderr text)."""
        chunks: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                chunks.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                chunks.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], "".join(chunks)

    def value(self, expr_code: str, timeout: float = 60) -> Any:
        """Run code whose last line prints a JSON value; return it parsed."""
        content, text = self.run(expr_code, timeout)
        assert content["status"] == "ok", text
        return json.loads(text.strip().splitlines()[-1])

    def stop(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)


@pytest.fixture
def start_kernel(
    ksm: KernelSpecManager, docker_client: docker.DockerClient
) -> Iterator[Callable[..., Kernel]]:
    started: list[Kernel] = []

    def start(name: str = "sandbox-python", **km_kwargs: Any) -> Kernel:
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm, **km_kwargs)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
        except Exception:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            raise
        kernel = Kernel(km, kc)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


@pytest.fixture(scope="module")
def shared_kernel(ksm: KernelSpecManager, docker_client: docker.DockerClient) -> Iterator[Kernel]:
    """One kernel for read-only checks, to keep the suite quick."""
    km = KernelManager(kernel_name="sandbox-python", kernel_spec_manager=ksm)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kernel = Kernel(km, kc)
    yield kernel
    kernel.stop()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole session: no container of ours remains."""
    yield
    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return
    leftovers = our_containers(client)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


class NetnsHost:
    """A TCP+UDP server in a network namespace of our own: a stand-in for the LAN/internet."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = f"skt-{tag}"
        self.veth = f"skh{tag}"
        self.addr = "10.213.7.2"
        self.host_addr = "10.213.7.1"
        self.port = 8080
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NetnsHost:
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "skn0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.veth)
        sh("ip", "link", "set", self.veth, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.addr}/30", "dev", "skn0")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "skn0", "up")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        server = (
            "import socket, threading\n"
            f"t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"t.bind(('{self.addr}', {self.port})); t.listen()\n"
            f"u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('{self.addr}', {self.port}))\n"
            "def udp():\n"
            "    while True:\n"
            "        d, a = u.recvfrom(100); u.sendto(b'udp-pong', a)\n"
            "threading.Thread(target=udp, daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    c, _ = t.accept(); c.sendall(b'tcp-pong'); c.close()\n"
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", server], stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"
        return self

    def reachable_from_host(self) -> bool:
        with socket.create_connection((self.addr, self.port), timeout=3) as s:
            return s.recv(16) == b"tcp-pong"

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], check=False, capture_output=True)


@pytest.fixture
def test_host() -> Iterator[NetnsHost]:
    with NetnsHost() as host:
        assert host.reachable_from_host(), "the test host must be live, or the test proves nothing"
        yield host
