"""Helpers shared by the integration and security suites: a started kernel, test hosts in
network namespaces, host-side observations (listening ports, our containers)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.backends import gvisor
from sandbox_kernel.backends.owner import (
    LABEL_KERNEL_ID,
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_SERVER_PID,
)
from sandbox_kernel.backends.releases import parse_release, runtime_release
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.policy import GVISOR_RUNTIMES, SandboxPolicy, build_policy
from sandbox_kernel.security.expectations import GVISOR_BACKENDS
from sandbox_kernel.settings import BY_NAME

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"  # the configs docs/*.md tell operators to use
# The Docker runtime the default kernelspecs (sandbox-python, sandbox-small) use, and the
# runsc backend's kernelspecs' binary: unset, the kernelspec's own default (runsc-current,
# the current gVisor setup-host builds); SANDBOX_KERNEL_TEST_RUNTIME=runsc runs the
# integration and security suites on Debian's runsc (docs/backends.md). Verdicts follow
# the gap table of the release that runs (gvisor_release).
DEFAULT_RUNTIME: str = BY_NAME["runtime"].default
TEST_RUNTIME = os.environ.get("SANDBOX_KERNEL_TEST_RUNTIME") or DEFAULT_RUNTIME
# The runsc backend on the same gVisor (root and rootless kernelspecs).
RUNSC_RUNTIME = {"runtime": TEST_RUNTIME} if TEST_RUNTIME in GVISOR_RUNTIMES else {}
# Kernelspec configs of the non-default backends, as `sandbox-kernel install --backend` writes
# them; pool_size 0 so each test starts (and removes) exactly the sandboxes it counts. A
# variant of a backend (its name: backend-variant) is held to its backend's gap table.
BACKEND_CONFIGS: dict[str, dict[str, Any]] = {
    "runsc": {"backend": "runsc", "pool_size": 0, **RUNSC_RUNTIME},
    # gVisor's ptrace platform (the runsc backend's `platform` setting): same sentry, other
    # syscall interception; the whole catalogue runs with it too.
    "runsc-ptrace": {"backend": "runsc", "platform": "ptrace", "pool_size": 0, **RUNSC_RUNTIME},
    "docker-runc": {"backend": "docker-runc", "pool_size": 0},
    # Debian's runsc (20240729) through Docker, still registered as `runsc`: what hosts set
    # up with SANDBOX_KERNEL_RUNSC=debian run, held to that release's wider gap table; also
    # where a weakening shows that the current gVisor refuses by itself (mknod of devices).
    "debian-runsc": {"backend": "docker", "runtime": "runsc", "pool_size": 0},
    # And the runsc backend on Debian's runsc: every configuration benchmarks/run.py
    # measures holds the catalogue (issue 22).
    "runsc-debian": {"backend": "runsc", "runtime": "runsc", "pool_size": 0},
    "bwrap": {"backend": "bwrap", "pool_size": 0},
    "firejail": {"backend": "firejail", "pool_size": 0, "accept_unenforced": ["tmp_size"]},
}
# The kubernetes backend, where a cluster is configured (KUBECONFIG: scripts/dev-cluster.sh
# up prints it); without one it is not a variant here, so nothing that iterates over these
# needs a cluster. Its pods go to SANDBOX_KERNEL_K8S_NAMESPACE (default: "default"); the
# node has the image (the dev cluster imports it); a pod has no pids cap of its own.
# Its gVisor is the node's: the dev cluster's runs runsc at the runsc-current pin
# (dev-cluster.sh); another cluster's, SANDBOX_KERNEL_K8S_GVISOR_RELEASE (YYYYMMDD).
K8S_GVISOR_RELEASE = int(
    os.environ.get("SANDBOX_KERNEL_K8S_GVISOR_RELEASE")
    or parse_release(gvisor.CURRENT["RUNSC_CURRENT_PIN"])
)
if os.environ.get("KUBECONFIG"):
    BACKEND_CONFIGS["kubernetes"] = {
        "backend": "kubernetes",
        "pool_size": 0,
        "namespace": os.environ.get("SANDBOX_KERNEL_K8S_NAMESPACE", "default"),
        "runtime_class": os.environ.get("SANDBOX_KERNEL_K8S_RUNTIME_CLASS", "gvisor"),
        "image_pull_policy": "Never",
        "accept_unenforced": ["pids_limit"],
    }


# Kubernetes tests (tests/integration/test_kubernetes*.py): the dev cluster's gVisor class,
# and how long a cold gVisor pod may take on a loaded 2-core machine.
K8S_RUNTIME_CLASS = os.environ.get("SANDBOX_KERNEL_K8S_RUNTIME_CLASS", "gvisor")
K8S_POD_TIMEOUT = 120


@contextmanager
def kube_namespace(core: Any, prefix: str) -> Iterator[str]:
    """A namespace of its own for a Kubernetes test (``core``: a CoreV1Api), ready once the
    controller manager made its service account (pods are admitted only then); deleted at
    the end with its pods, and asserted gone."""
    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        deadline = time.monotonic() + K8S_POD_TIMEOUT
        while not core.list_namespaced_service_account(name).items:
            assert time.monotonic() < deadline, f"no service account in {name}: controllers?"
            time.sleep(0.5)
        yield name
    finally:
        core.delete_namespace(name, grace_period_seconds=0)
        deadline = time.monotonic() + K8S_POD_TIMEOUT
        while time.monotonic() < deadline:
            try:
                core.read_namespace(name)
            except client.ApiException as exc:
                if exc.status == 404:
                    break
                raise
            time.sleep(1)
        else:
            raise AssertionError(
                f"namespace {name} (and its pods) still there after {K8S_POD_TIMEOUT} s"
            )


def policy(**overrides: Any) -> SandboxPolicy:
    """A validated policy for the default image, with ``overrides``: the unit tests'."""
    return build_policy(**{"image": DEFAULT_IMAGE, **overrides})


def backend_of(variant: str) -> str:
    """The backend a BACKEND_CONFIGS entry runs (its gap table's key)."""
    return str(BACKEND_CONFIGS[variant]["backend"])


@functools.cache
def gvisor_release(backend: str, runtime: str = TEST_RUNTIME) -> int | None:
    """The runsc release a ``backend`` kernel of the tests runs on (None: not gVisor), to
    hold it to that release's gaps (``security.expectations.gaps_of``)."""
    if backend not in GVISOR_BACKENDS:
        return None
    if backend == "kubernetes":  # the node's, which the host of the dev cluster knows
        return K8S_GVISOR_RELEASE
    return runtime_release(backend, runtime if runtime in GVISOR_RUNTIMES else "runsc")


def variant_release(variant: str) -> int | None:
    """:func:`gvisor_release` of a BACKEND_CONFIGS entry."""
    config = BACKEND_CONFIGS[variant]
    return gvisor_release(backend_of(variant), config.get("runtime", BY_NAME["runtime"].default))


SETUP = "run `sudo scripts/quickstart.sh` (or `sandbox-kernel setup-host && sandbox-kernel image build`)"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`sandbox-kernel ARGS` of this checkout, with ``env`` over the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "sandbox_kernel.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def listed() -> list[dict[str, Any]]:
    """The rows of `sandbox-kernel ps --json`."""
    r = cli("ps", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def kernelspecs(prefix: Path) -> dict[str, Any]:
    """What `jupyter kernelspec list --json` finds under an install's ``--prefix``."""
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)["kernelspecs"]  # type: ignore[no-any-return]


def our_containers(
    client: docker.DockerClient, kernel_id: str | None = None, *, pooled: bool = False
) -> list[Any]:
    """Containers of this test process (or of one kernel); warm-pool sandboxes, which come
    and go in the background, only with ``pooled``."""
    label = f"{LABEL_KERNEL_ID}={kernel_id}" if kernel_id else f"{LABEL_SERVER_PID}={os.getpid()}"
    # sparse: one call, no per-container inspect that races with removals (404).
    found = client.containers.list(
        all=True, sparse=True, filters={"label": [f"{LABEL_MANAGED}=1", label]}
    )
    return [c for c in found if pooled or LABEL_POOL not in (c.attrs.get("Labels") or {})]


def our_runsc_sandboxes() -> list[str]:
    """Bundles of runsc sandboxes this test process created (as root) that still exist."""
    from sandbox_kernel.backends.runsc_inventory import ROOT_STATE

    found = []
    try:
        bundles = list((ROOT_STATE / "bundles").glob("*"))
    except PermissionError:  # root's folder: a process that is not root made none of them
        return []
    for bundle in bundles:
        try:
            labels = json.loads((bundle / "config.json").read_text()).get("annotations", {})
        except (OSError, ValueError):
            continue
        if labels.get(LABEL_SERVER_PID) == str(os.getpid()):
            found.append(bundle.name)
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- what the runsc backend run by root leaves on the host (its state, bundles, cgroups) ------


def runsc_ids() -> set[str]:
    """Containers in root's runsc state (every process of this host running as root)."""
    from sandbox_kernel.backends.runsc_inventory import ROOT_STATE
    from sandbox_kernel.backends.runsc_tool import find_runsc, runsc_argv

    out = subprocess.run(
        runsc_argv(find_runsc(), ROOT_STATE / "state", "list", "--format", "json", rootless=False),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {c["id"] for c in json.loads(out.stdout or "[]") or []}


def runsc_cgroup_dirs(name: str = "") -> set[str]:
    """Folders of runsc-made cgroups (of one sandbox) in every v1 hierarchy."""
    from sandbox_kernel.backends.runsc_oci import CGROUP_PREFIX

    return {str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}{name or '*'}")}


def runsc_bundles() -> set[str]:
    from sandbox_kernel.backends.runsc_inventory import ROOT_STATE

    return {p.name for p in (ROOT_STATE / "bundles").iterdir()}


def runsc_images() -> set[str]:
    """The warm pools' snapshots on disk."""
    from sandbox_kernel.backends.runsc_inventory import ROOT_STATE

    return {p.name for p in (ROOT_STATE / "images").iterdir()}


def container_exists(client: docker.DockerClient, cid: str | None, settle: float = 10.0) -> bool:
    """Whether ``cid`` exists, allowing ``settle`` seconds for a removal under way
    (Docker answers a forced remove of an auto-removing container before it is gone)."""
    deadline = time.monotonic() + settle
    while cid and client.containers.list(all=True, filters={"id": cid}):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)
    return False


def socket_inodes(pid: str = "self") -> set[str]:
    """Inodes of the sockets process ``pid`` holds (as /proc/net/tcp names them)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_listeners() -> list[tuple[str, int, str]]:
    """(local address hex, port, socket inode) of every TCP listener on the host."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, port = fields[1].split(":")
                if fields[3] == "0A":  # LISTEN
                    out.append((addr, int(port, 16), fields[9]))
    return out


def listening_ports(own_only: bool = False) -> dict[int, str]:
    """port -> local address (hex, as in /proc/net/tcp) of TCP listeners on the host;
    with ``own_only``, only sockets this test process holds (other processes on the
    machine may open and close ports meanwhile)."""
    own = socket_inodes() if own_only else set()
    return {port: addr for addr, port, inode in tcp_listeners() if not own_only or inode in own}


def ending(pid: int) -> bool:
    """Whether process ``pid`` is gone, a zombie, or has a SIGKILL or SIGTERM pending: a
    signal sent to it by a call that has returned shows here at once, with no wait."""
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    except OSError:
        return True
    if status["State"].split()[0] in ("Z", "X"):
        return True
    fatal = (1 << (signal.SIGKILL - 1)) | (1 << (signal.SIGTERM - 1))
    return any(int(status[k], 16) & fatal for k in ("SigPnd", "ShdPnd"))


def sandbox_id(km: KernelManager) -> str | None:
    """The id of the sandbox running ``km``'s kernel (None when none runs)."""
    from sandbox_kernel.provisioner import SandboxProvisioner

    prov = km.provisioner
    assert prov is None or isinstance(prov, SandboxProvisioner), prov
    return prov.sandbox_id if prov is not None else None


class Kernel:
    """A started sandboxed kernel with a blocking client."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc

    @property
    def sandbox_id(self) -> str | None:
        return sandbox_id(self.km)

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

    def interrupt_running_cell(self, seconds: int = 600) -> tuple[str, dict[str, Any]]:
        """Run a cell that would sleep ``seconds``, interrupt it once it runs (it says so on
        stdout), and return (its msg_id, the next shell reply). Generous timeouts
        only: whether the interrupt ended the cell is judged by the reply, never by time."""
        msg_id = self.kc.execute(
            f"import time\nprint('running', flush=True)\ntime.sleep({seconds})"
        )
        while True:
            msg = self.kc.get_iopub_msg(timeout=60)
            content = msg["content"]
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "stream"
                and "running" in content.get("text", "")
            ):
                break
        self.km.interrupt_kernel()
        while True:
            reply: dict[str, Any] = self.kc.get_shell_msg(timeout=60)
            # wait_for_ready asks kernel_info until iopub works too: late replies may remain.
            if reply["msg_type"] != "kernel_info_reply":
                return msg_id, reply

    def stop(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)


def ready_kernel(
    ksm: KernelSpecManager,
    name: str = "sandbox-python",
    *,
    cwd: Path | None = None,
    timeout: float = 60,
    **km_kwargs: Any,
) -> Kernel:
    """Kernelspec ``name`` of ``ksm`` started, its client's channels open and ready; shut
    down at once if it does not become ready. The caller stops it (or use
    :func:`running_kernel`; the ``start_kernel`` fixture stops its kernels at teardown)."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm, **km_kwargs)
    km.start_kernel(**({"cwd": str(cwd)} if cwd else {}))
    kernel = Kernel(km, km.client())
    kernel.kc.start_channels()
    try:
        kernel.kc.wait_for_ready(timeout=timeout)
    except BaseException:
        kernel.kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return kernel


@contextmanager
def running_kernel(
    ksm: KernelSpecManager, name: str = "sandbox-python", **kwargs: Any
) -> Iterator[Kernel]:
    """:func:`ready_kernel` for the ``with`` block, shut down after it whatever happened."""
    kernel = ready_kernel(ksm, name, **kwargs)
    try:
        yield kernel
    finally:
        kernel.stop()


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
        def sh(*argv: str) -> None:
            subprocess.run(argv, check=True, capture_output=True)

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


def documented(doc: str, pattern: str) -> int:
    """A number as docs/``doc`` states it (``pattern``'s first group): bounds are asserted
    against what the user docs promise, never against the constant under test, which a
    weakening would raise together with its own check."""
    found = re.search(pattern, (REPO / "docs" / doc).read_text())
    assert found, f"docs/{doc} no longer states {pattern!r}"
    return int(found.group(1))


def pool_of(km: Any) -> Any:
    """The warm pool ``km``'s provisioner draws from (None before it made one): its backend
    and policy (pools of other backends may hold the same policy)."""
    from sandbox_kernel.pool import WarmPool

    prov = km.provisioner
    backend = prov.sandbox_backend.describe()
    pools = list(WarmPool._pools.values())
    return next(
        (p for p in pools if p.policy == prov.policy and p.backend.describe() == backend), None
    )


def wait_for_ready_pool(kernel: Kernel, timeout: float = 60) -> None:
    """Until the pool ``kernel`` draws from has a sandbox ready."""
    from sandbox_kernel.pool import WarmPool

    deadline = time.monotonic() + timeout
    while not getattr(pool_of(kernel.km), "ready", None):
        assert time.monotonic() < deadline, f"the warm pool did not fill: {WarmPool.stats()}"
        time.sleep(0.1)


@contextmanager
def second_dockerd(config: dict) -> Iterator[str]:  # type: ignore[type-arg]
    """A second, real dockerd with its own state and ``config`` as daemon.json."""
    root = Path(tempfile.mkdtemp(prefix="sk-dockerd-", dir="/tmp"))
    (root / "daemon.json").write_text(json.dumps(config))
    sock = f"unix://{root}/docker.sock"
    proc = subprocess.Popen(
        [
            "dockerd",
            "--config-file",
            str(root / "daemon.json"),
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "pid"),
            "-H",
            sock,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "log").open("wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                docker.DockerClient(base_url=sock).ping()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((root / "log").read_text()[-2000:]) from None
                time.sleep(0.3)
        yield sock
    finally:
        # A test that fails midway may leave a container; its shim and sandbox would
        # outlive this daemon (they are not its children), so remove them first.
        try:
            for c in docker.DockerClient(base_url=sock).containers.list(all=True):
                c.remove(force=True)
        except Exception:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim.*{root}/"], check=False)
        subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


# Run as another local user against a kernel's host ports: requests signed with a key of
# its own (the only kind it can make; the first one tries to leave a mark in the sandbox),
# and a subscription to the kernel's output channel (IOPub), read while the owner works.
FOREIGN_CLIENT = r"""
import json, os, sys, time, zmq
from jupyter_client.session import Session
ports = json.loads(sys.argv[1])
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect("tcp://127.0.0.1:%d" % ports["iopub_port"])
mine = Session(key=os.urandom(32).hex().encode(), username="intruder")
replies = {}
for channel in ("shell_port", "control_port"):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect("tcp://127.0.0.1:%d" % ports[channel])
    mine.send(s, "execute_request", {"code": "open('/tmp/INTRUDER-WAS-HERE', 'w').close()",
              "silent": False, "store_history": False, "allow_stdin": False})
    mine.send(s, "kernel_info_request", {})
    replies[channel] = s.poll(8000)
print("READY", json.dumps(replies), flush=True)
sys.stdin.readline()  # the owner's kernel prints meanwhile
got = []
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    if sub.poll(500):
        got.append(b"".join(sub.recv_multipart()).decode(errors="replace"))
print("IOPUB", json.dumps(got), flush=True)
"""


class ForeignClient:
    """FOREIGN_CLIENT run by ``argv`` (e.g. ``setpriv ... python``) against ``ports``."""

    def __init__(self, argv: list[str], ports: dict[str, int], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            [*argv, "-c", FOREIGN_CLIENT, json.dumps(ports)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            **popen,
        )  # fmt: skip

    def replies(self) -> dict[str, int]:
        """Whether the kernel answered the intruder's requests, per channel (0: no)."""
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if not ready.startswith("READY"):
            self.proc.kill()
            raise AssertionError(f"{ready!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        return json.loads(ready.split(" ", 1)[1])  # type: ignore[no-any-return]

    def iopub(self) -> list[str]:
        """The output messages the intruder received (call after the owner's kernel printed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            assert line.startswith("IOPUB"), line
            return json.loads(line.split(" ", 1)[1])  # type: ignore[no-any-return]
        finally:
            self.proc.kill()
            self.proc.wait()


class BlockingCalls:
    """Records which thread made each blocking call while active: starting or waiting for
    a process (``subprocess.Popen``), ``time.sleep``, and every HTTP request of the Docker
    SDK (``requests.Session.send``, which the SDK's APIClient inherits).

    An async caller must make none of them on its event loop's thread: the check that the
    provisioner never blocks Jupyter's loop, which holds however loaded the machine is."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []  # (what, thread id, where)
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, attr: str, what: str) -> None:
        real = getattr(owner, attr)
        calls = self.calls

        def recorded(*args: Any, **kwargs: Any) -> Any:
            where = "".join(traceback.format_stack(limit=8)[:-1])
            calls.append((what, threading.get_ident(), where))
            return real(*args, **kwargs)

        setattr(owner, attr, recorded)
        self._undo.append(lambda: setattr(owner, attr, real))

    def __enter__(self) -> BlockingCalls:
        import requests

        self._wrap(subprocess.Popen, "__init__", "subprocess.Popen")
        self._wrap(subprocess.Popen, "wait", "subprocess.Popen.wait")
        self._wrap(time, "sleep", "time.sleep")
        self._wrap(requests.Session, "send", "Docker SDK HTTP request")
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def count(self, what: str) -> int:
        return sum(1 for w, _t, _where in self.calls if w == what)

    def on_thread(self, ident: int) -> list[str]:
        """The calls made on thread ``ident``, each with where it was made."""
        return [f"{what} at\n{where}" for what, t, where in self.calls if t == ident]
