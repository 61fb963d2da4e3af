"""The daemon-less backends (bwrap, firejail) end to end with real tools and ipykernel
(the runsc backend: test_runsc.py, test_runsc_rootless.py; its install here):
a kernel runs code, is interrupted, restarted and shut down, its limits hold, and
nothing is left behind (processes, cgroups, temporary folders, ports); `ps` lists and
`gc` removes the sandboxes of a killed Jupyter process. Refusals fail closed and name
what is missing. docker-runc shares the Docker code path (the attack
suite covers it in tests/security/test_backend_attacks.py).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.backends.pipe import PipeBackend
from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import (
    BACKEND_CONFIGS,
    REPO,
    Kernel,
    alive,
    cli,
    kernelspecs,
    listed,
    listening_ports,
    pool_of,
    ready_kernel,
    wait_until,
)

PIPE_BACKENDS = ["bwrap", "firejail"]


def sandbox_state(kernel: Kernel) -> tuple[int, list[Path]]:
    """(pid of the sandbox tool, its cgroup folders) of a running kernel."""
    name = kernel.sandbox_id
    assert name is not None
    spawned = PipeBackend._sandboxes[name]
    assert spawned.cgroup is not None, "running as root: cgroups must be in use"
    return spawned.proc.pid, list(spawned.cgroup.dirs.values())


def cgroup_dirs() -> set[str]:
    return set(glob.glob("/sys/fs/cgroup/*/sandbox-kernel/*/"))


def runsc_leftovers() -> set[str]:
    """Bundles of the runsc backend (as root) whose Jupyter process is gone, and their
    cgroups (sandboxes of live processes, e.g. other test runs, do not count)."""
    import socket

    from sandbox_kernel.backends.owner import Owner
    from sandbox_kernel.backends.runsc_inventory import ROOT_STATE
    from sandbox_kernel.backends.runsc_oci import CGROUP_PREFIX

    found = set()
    for bundle in (ROOT_STATE / "bundles").glob("*"):
        try:
            labels = json.loads((bundle / "config.json").read_text()).get("annotations", {})
        except (OSError, ValueError):
            continue
        owner = Owner.from_labels(labels)
        if owner is not None and owner.server_gone(socket.gethostname()):
            found |= {str(bundle), *glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PREFIX}{bundle.name}")}
    return found


def stderr_memfds(backend: str) -> set[str]:
    """This process's descriptors of sandbox tools' stderr memfds (one per live sandbox)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:sandbox-kernel-{backend}-stderr"):
            found.add(f"{fd} -> {target}")
    return found


@pytest.mark.parametrize("backend", PIPE_BACKENDS)
def test_kernel_lifecycle_and_cleanup(backend: str, start_kernel: Callable[..., Kernel]) -> None:
    before_fds = stderr_memfds(backend)
    before_ports = listening_ports(own_only=True)
    kernel = start_kernel(f"sandbox-{backend}")
    pid, cgroups = sandbox_state(kernel)
    who = kernel.value(
        "import os, socket, json, numpy\n"
        "print(json.dumps([os.getuid(), socket.gethostname(), os.path.realpath(os.getcwd()), "
        "float(numpy.arange(4).sum())]))"
    )
    assert who[0] != 0 and who[1] == "sandbox" and who[2] == "/home/sandbox" and who[3] == 6.0
    for d in cgroups:
        assert d.is_dir(), f"cgroup {d} is missing while the kernel runs"
    assert str(pid) in (cgroups[0] / "cgroup.procs").read_text().split()

    # Interrupt a busy cell: the kernel survives with a KeyboardInterrupt.
    msg_id, reply = kernel.interrupt_running_cell()
    assert reply["parent_header"]["msg_id"] == msg_id
    assert (
        reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    )

    # Restart: a new sandbox replaces the old one, which is gone with its cgroups.
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    wait_until(lambda: not alive(pid), 10, "the old sandbox to end after restart")
    assert not any(d.exists() for d in cgroups), "the old sandbox's cgroups were not removed"
    new_pid, new_cgroups = sandbox_state(kernel)
    assert new_pid != pid
    assert kernel.value("print(6 * 7)") == 42

    # Shutdown: nothing left.
    kernel.stop()
    wait_until(lambda: not alive(new_pid), 10, "the sandbox to end at shutdown")
    assert not any(d.exists() for d in new_cgroups), "cgroups left behind"
    assert stderr_memfds(backend) <= before_fds, "stderr memfds left open"
    assert not PipeBackend._sandboxes.get(str(kernel.sandbox_id)), "backend still tracks it"
    assert set(listening_ports(own_only=True)) <= set(before_ports), "host ports left open"


@pytest.mark.parametrize("backend", PIPE_BACKENDS)
def test_limits_hold(backend: str, start_kernel: Callable[..., Kernel]) -> None:
    """The cgroup caps are the policy's; a fork loop meets EAGAIN at the process limit, and
    an allocation beyond the memory cap does not succeed."""
    kernel = start_kernel(f"sandbox-{backend}")
    _pid, cgroups = sandbox_state(kernel)
    by_name = {d.parts[-3]: d for d in cgroups}
    assert int((by_name["memory"] / "memory.limit_in_bytes").read_text()) == 2 * 2**30
    assert int((by_name["cpu"] / "cpu.cfs_quota_us").read_text()) == 100_000
    forks = kernel.value(
        "import os, json, errno, time\n"
        "kids, err = [], None\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        err = errno.errorcode[e.errno]; break\n"
        "    if pid == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        "    kids.append(pid)\n"
        "for k in kids:\n"
        "    os.kill(k, 9); os.waitpid(k, 0)\n"
        "print(json.dumps([len(kids), err]))",
        timeout=120,
    )
    assert forks[1] == "EAGAIN" and forks[0] < 64, forks
    # Beyond the memory cap: the cgroup's OOM killer ends the kernel (or it gets MemoryError).
    kernel.kc.execute("b = bytearray(3 * 2**30); b[::4096] = b'x' * len(b[::4096])")
    deadline, status = time.monotonic() + 90, None
    while time.monotonic() < deadline and status is None and kernel.km.is_alive():
        try:
            status = kernel.kc.get_shell_msg(timeout=0.5)["content"]["status"]
        except Exception:
            continue
    assert status != "ok", "3 GiB fit in a 2 GiB sandbox"
    oom = (by_name["memory"] / "memory.oom_control").read_text()
    failcnt = int((by_name["memory"] / "memory.failcnt").read_text())
    assert failcnt > 0 or "oom_kill 0" not in oom, f"the memory cgroup never hit its cap: {oom}"


def test_unaccepted_gap_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    """firejail cannot cap tmpfs sizes: without accept_unenforced=['tmp_size'] it refuses,
    naming the property, and leaves no port, process or folder behind."""
    config = {k: v for k, v in BACKEND_CONFIGS["firejail"].items() if k != "accept_unenforced"}
    (tmp_path / "fj-strict").mkdir()
    (tmp_path / "fj-strict" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path)])
    before_ports, before_fds = listening_ports(own_only=True), stderr_memfds("firejail")
    running = set(PipeBackend._sandboxes)
    km = KernelManager(kernel_name="fj-strict", kernel_spec_manager=ksm)
    with pytest.raises(Exception, match=r"tmp_size \(firejail cannot cap") as err:
        km.start_kernel()
    assert "fail closed" in str(err.value) and "accept_unenforced=['tmp_size']" in str(err.value)
    assert set(listening_ports(own_only=True)) <= set(before_ports)
    assert stderr_memfds("firejail") <= before_fds and set(PipeBackend._sandboxes) <= running


def test_missing_rootfs_names_the_fix(tmp_path: Path) -> None:
    config = {**BACKEND_CONFIGS["bwrap"], "rootfs": str(tmp_path / "absent")}
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    km = KernelManager(
        kernel_name="k", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path)])
    )
    with pytest.raises(Exception, match="export-rootfs"):
        km.start_kernel()


@pytest.mark.parametrize("backend", ["runsc", "bwrap", "firejail", "docker-runc"])
def test_install_backend_runs_the_demo_notebook(backend: str, tmp_path: Path) -> None:
    """`sandbox-kernel install --backend X` writes a kernelspec named for the backend, whose
    display name states the tier, and `sandbox-kernel run` executes notebooks/demo.ipynb in it
    (numpy, a figure, and the sandbox refusing network, Docker socket, rootfs write, raw
    socket)."""
    import nbformat

    extra = ["--accept-unenforced", "tmp_size"] if backend == "firejail" else []
    r = cli("install", "--prefix", str(tmp_path), "--backend", backend, *extra)
    assert r.returncode == 0, r.stderr
    name = f"sandbox-python-{backend}"
    spec = kernelspecs(tmp_path)[name]["spec"]
    assert spec["display_name"].startswith("Python 3 (sandboxed, ")
    tier = "runsc" if backend == "runsc" else "host kernel"
    assert tier in spec["display_name"], spec["display_name"]
    out = tmp_path / "demo.out.ipynb"
    env = {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    nb_in = REPO / "notebooks" / "demo.ipynb"
    before = stderr_memfds(backend), cgroup_dirs(), runsc_leftovers()
    r = cli("run", str(nb_in), "--kernel", name, "--output", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # The process has exited: its kernel and its warm-pool sandbox (pool_size 1) are gone.
    assert stderr_memfds(backend) <= before[0], "stderr memfd left open by the exited process"
    assert cgroup_dirs() <= before[1], "cgroups left by the exited process"
    assert runsc_leftovers() <= before[2], "runsc bundles or cgroups left by the exited process"
    executed = nbformat.read(out, as_version=4)
    errors = [
        o for c in executed.cells for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    assert not errors, errors


def test_bwrap_warm_pool(tmp_path: Path) -> None:
    """The warm pool works for a pipe backend: a launch claims a pre-started bwrap sandbox,
    and draining the pool leaves no sandbox, process or cgroup behind."""
    from sandbox_kernel.relay.thread import RelayThread

    config = {**BACKEND_CONFIGS["bwrap"], "pool_size": 1, "memory_limit": "1536m"}
    (tmp_path / "bw-pool").mkdir()
    (tmp_path / "bw-pool" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path)])
    kernels: list[Kernel] = []
    try:
        for _ in range(2):
            kernels.append(ready_kernel(ksm, "bw-pool"))
            pool = pool_of(kernels[-1].km)
            wait_until(lambda p=pool: bool(p.ready), 60, "the bwrap warm pool to fill")  # type: ignore[misc]
        assert not kernels[0].km.provisioner.last_start_warm  # type: ignore[union-attr]
        assert kernels[1].km.provisioner.last_start_warm  # type: ignore[union-attr]
        assert kernels[1].value("import os; print(os.getuid())") == 1000
        pooled = [s.sandbox_id for s in pool.ready]
        assert pooled and all(name in PipeBackend._sandboxes for name in pooled)
        states = [PipeBackend._sandboxes[name] for name in pooled]
    finally:
        for kernel in kernels:
            kernel.stop()
    RelayThread.get().submit(pool.drain()).result(timeout=60)
    for name, state in zip(pooled, states, strict=True):
        assert name not in PipeBackend._sandboxes
        wait_until(lambda s=state: not alive(s.proc.pid), 10, "the pooled sandbox to end")  # type: ignore[misc]
        assert state.cgroup is not None and not any(d.exists() for d in state.cgroup.dirs.values())


UNPRIVILEGED_PREFLIGHT = """
import json, logging, sys
from sandbox_kernel.backends.bwrap import BwrapBackend
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.policy import build_policy
policy = build_policy(image="sandbox-kernel/python:latest")
try:
    BwrapBackend(logging.getLogger(), rootfs=sys.argv[1])._preflight(policy)
    print(json.dumps({"refused": None}))
except SandboxError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def test_bwrap_without_root_refuses_the_limits_it_cannot_enforce() -> None:
    """A server that is not root (e.g. a laptop) has no writable cgroups and cannot give
    each sandbox its own uid: the real preflight, run as an unprivileged user, refuses and
    names memory_limit, cpu_limit, pids_limit and nproc_limit (fail closed)."""
    import shutil
    import subprocess

    from sandbox_kernel.image.rootfs import rootfs_for

    rootfs = rootfs_for("sandbox-kernel/python:latest").resolve()
    copy = Path(tempfile.mkdtemp(prefix="sk-unpriv-"))
    try:
        shutil.copytree(
            Path(__file__).resolve().parents[2] / "sandbox_kernel", copy / "sandbox_kernel"
        )
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             "/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(copy)!r})\n"
             + UNPRIVILEGED_PREFLIGHT, str(rootfs)],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        refused = json.loads(out.stdout.strip().splitlines()[-1])["refused"]
    finally:
        shutil.rmtree(copy)
    assert refused, "an unprivileged server's bwrap preflight accepted a policy it cannot enforce"
    for prop in ("memory_limit", "cpu_limit", "pids_limit", "nproc_limit"):
        assert f"{prop} (" in refused, refused
    assert "fail closed" in refused and "accept_unenforced" in refused
    for enforced in ("network (", "host_files (", "seccomp (", "tmp_size ("):
        assert enforced not in refused, refused


@pytest.mark.parametrize("backend", ["bwrap", "firejail"])
def test_doctor_checks_a_backend(backend: str) -> None:
    """`sandbox-kernel doctor --backend X`: the backend's host checks, what it cannot enforce
    here, a real kernel, and the self-contained attacks judged against its gap table."""
    from sandbox_kernel.security.expectations import GAPS

    r = cli("doctor", "--backend", backend, "--json")
    report = json.loads(r.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks[f"{backend} enforces the policy here"]["ok"] is True
    if backend == "firejail":
        assert "NOT enforced: tmp_size" in checks["firejail enforces the policy here"]["detail"]
    attacks = checks["attack subset as documented"]
    assert attacks["ok"] is True and r.returncode == 0, attacks
    assert "fs-mountinfo" in attacks["detail"] and "fs-mountinfo" in GAPS[backend]


def test_firejail_never_writes_into_the_tree_other_backends_use(
    start_kernel: Callable[..., Kernel],
) -> None:
    """firejail copies the host's resolv.conf into its chroot at every launch: it chroots
    into a copy of its own, and sees no host resolver inside either."""
    from sandbox_kernel.image.recipe import DEFAULT_IMAGE
    from sandbox_kernel.image.rootfs import NEUTRAL_ETC, firejail_tree, rootfs_for

    shared = rootfs_for(DEFAULT_IMAGE).resolve()
    before = (shared / "etc/resolv.conf").read_text()
    assert before == NEUTRAL_ETC["etc/resolv.conf"]
    kernel = start_kernel("sandbox-firejail")
    inside = kernel.value("import json\nprint(json.dumps(open('/etc/resolv.conf').read()))")
    host_servers = [w for w in Path("/etc/resolv.conf").read_text().split() if w[:1].isdigit()]
    assert not any(server in inside.split() for server in host_servers), inside
    assert (shared / "etc/resolv.conf").read_text() == before  # the shared tree is untouched
    # ...while firejail did write into its own copy (the reason it has one).
    own = (firejail_tree(shared) / "etc/resolv.conf").stat()
    assert own.st_ino != (shared / "etc/resolv.conf").stat().st_ino


# A Jupyter process that starts a kernel on each pipe backend, prints
# "<kernel id> <sandbox name> <sandbox tool pid>" for each, and waits to be killed.
KILLED_SERVER = """
import sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from sandbox_kernel.backends.pipe import PipeBackend
ksm = KernelSpecManager(kernel_dirs=[sys.argv[1]])
rows = []
for name in sys.argv[2:]:
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel()
    kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
    sid = km.provisioner.sandbox_id
    rows.append(f"{km.kernel_id} {sid} {PipeBackend._sandboxes[sid].proc.pid}")
print(*rows, sep="\\n", flush=True)
time.sleep(600)
"""


def freeze(cgroup: Path) -> set[int]:
    """SIGSTOP every process of a sandbox (its pids cgroup) until none is left running."""
    stopped: set[int] = set()
    deadline = time.monotonic() + 10
    while (pids := {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}) - stopped:
        assert time.monotonic() < deadline, "the sandbox's processes did not stop"
        for pid in pids - stopped:
            os.kill(pid, signal.SIGSTOP)
        stopped |= pids
    return stopped


def test_ps_and_gc_see_sandboxes_of_a_killed_jupyter_process(kernel_dirs: Path) -> None:
    """A Jupyter process killed with SIGKILL leaves a bubblewrap and a firejail sandbox that
    do not end themselves (stopped, so they cannot see their pipe close): ``ps`` lists
    both with their kernel ids, ``gc`` removes them, and nothing is left: no process, no
    cgroup, no record in the state folder."""
    from sandbox_kernel.backends.state import root_base

    server = subprocess.Popen(
        [sys.executable, "-c", KILLED_SERVER, str(kernel_dirs),
         *(f"sandbox-{b}" for b in PIPE_BACKENDS)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    kernels: dict[str, str] = {}  # sandbox name -> kernel id
    pids: set[int] = set()
    try:
        assert server.stdout is not None
        started = [server.stdout.readline().split() for _ in PIPE_BACKENDS]
        assert all(len(row) == 3 for row in started), started
        kernels = {name: kernel_id for kernel_id, name, _pid in started}
        for name in kernels:
            pids |= freeze(Path(f"/sys/fs/cgroup/pids/sandbox-kernel/{name}"))
        assert {int(pid) for *_, pid in started} <= pids
        server.kill()
        server.wait()

        rows = {row["name"]: row for row in listed()}
        for backend, name in zip(PIPE_BACKENDS, kernels, strict=True):
            assert name in rows, f"ps does not list the {backend} sandbox of the killed process"
            assert rows[name]["backend"] == backend and rows[name]["kernel_id"] == kernels[name]
            assert rows[name]["server_pid"] == server.pid

        gc = cli("gc", timeout=120)
        assert gc.returncode == 0, gc.stderr
        removed = gc.stdout
        assert all(name in removed for name in kernels), removed
        wait_until(lambda: all(not alive(pid) for pid in pids), 10, "the orphaned sandboxes to end")
        for name in kernels:
            assert not glob.glob(f"/sys/fs/cgroup/*/sandbox-kernel/{name}"), "cgroups left"
            assert not (root_base("pipe") / f"{name}.json").exists(), "its record was left"
        assert not set(kernels) & {row["name"] for row in listed()}
    finally:  # whatever failed above: nothing of this test stays behind
        server.kill()
        server.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        wait_until(lambda: all(not alive(pid) for pid in pids), 10, "the sandboxes to end")
        for name in kernels:
            for d in glob.glob(f"/sys/fs/cgroup/*/sandbox-kernel/{name}"):
                os.rmdir(d)
            (root_base("pipe") / f"{name}.json").unlink(missing_ok=True)
