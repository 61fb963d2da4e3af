"""The runsc backend as root (gVisor without Docker) end to end, with real runsc and ipykernel:
a kernel runs in gVisor with the policy's mounts, is interrupted, restarted and shut down;
its cgroup caps hold (memory, CPU, pids); ps lists it; gc removes sandboxes of dead
Jupyter processes and keeps live ones; nothing is left behind (runsc state, bundles,
cgroups including runsc's parent folders, processes, ports). The rootless mode, run as a
real ordinary user, is in test_runsc_rootless.py; the attack suite in tests/security.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.backends.runsc import RunscBackend
from sandbox_kernel.backends.runsc_inventory import ROOT_STATE
from sandbox_kernel.backends.runsc_oci import CGROUP_PREFIX, oci_config
from sandbox_kernel.backends.runsc_tool import find_runsc, runsc_argv
from sandbox_kernel.image.rootfs import rootfs_for
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.policy import build_policy
from sandbox_kernel.security import ATTACKS
from sandbox_kernel.security.expectations import gaps_of
from tests.helpers import (
    BACKEND_CONFIGS,
    DEFAULT_RUNTIME,
    Kernel,
    alive,
    cli,
    gvisor_release,
    listed,
    listening_ports,
    pool_of,
    ready_kernel,
    running_kernel,
    runsc_bundles,
    runsc_cgroup_dirs,
    runsc_ids,
    runsc_images,
    wait_until,
)

RUNSC = "sandbox-runsc"
SELF_CONTAINED = {a.id for a in ATTACKS if not a.needs}  # what doctor runs


def sandbox_pids(name: str) -> set[int]:
    """Host processes of a sandbox: everything in its memory cgroup (sentry, gofer, stubs)."""
    procs = Path("/sys/fs/cgroup/memory") / f"{CGROUP_PREFIX}{name}" / "cgroup.procs"
    return {int(p) for p in procs.read_text().split()}


def processes_naming(name: str) -> set[int]:
    """Host processes whose command line names sandbox ``name``."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and name.encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def mounts_inside(kernel: Kernel) -> dict[str, list[str]]:
    """Mount point -> [file system type, options] from /proc/self/mountinfo inside."""
    table: dict[str, list[str]] = kernel.value(
        "import json\nm = {}\nfor line in open('/proc/self/mountinfo'):\n"
        "    f = line.split(); i = f.index('-')\n"
        "    m[f[4]] = [f[i + 1], f[i + 2], f[5] + ',' + f[i + 3]]\n"
        "print(json.dumps(m))"
    )
    return table


def tmpfs_size(options: str) -> int:
    """A tmpfs mount's size= in bytes: 20240729 shows bytes, the current gVisor KiB ('262144k')."""
    value = next(o[5:] for o in options.split(",") if o.startswith("size="))
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}.get(value[-1:].lower(), 1)
    return int(value.rstrip("kKmMgG")) * scale


def test_kernel_lifecycle_mounts_and_cleanup(start_kernel: Callable[..., Kernel]) -> None:
    before_ports = listening_ports(own_only=True)
    kernel = start_kernel(RUNSC)
    name = kernel.sandbox_id
    assert name is not None and name in runsc_ids() and name in runsc_bundles()
    pids = sandbox_pids(name)
    assert len(pids) >= 2, f"its sandbox and gofer: {pids}"
    # Run detached: no runsc process waits beside the sandbox (each would hold ~3.5 MiB);
    # every process that names it is one of its own, in its cgroup.
    assert processes_naming(name) <= pids, processes_naming(name) - pids
    who = kernel.value(
        "import os, socket, json, platform, numpy\n"
        "print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), socket.gethostname(), "
        "os.path.realpath(os.getcwd()), platform.release(), float(numpy.arange(4).sum())]))"
    )
    assert who[:5] == [1000, 1000, [], "sandbox", "/home/sandbox"], who
    assert who[5] != os.uname().release and who[6] == 6.0, "gVisor's kernel, and numpy works"

    # No host path is mounted: only the read-only image root, kernel file systems, runsc's
    # /dev and the size-capped noexec tmpfs mounts of the policy.
    mounts = mounts_inside(kernel)
    assert set(mounts) <= {
        "/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/net", "/tmp",
        "/home/sandbox",
    }, mounts  # fmt: skip
    assert mounts["/"][0] == "9p" and "ro" in mounts["/"][2].split(","), mounts["/"]
    assert "aname=/," in mounts["/"][2] and "/var/lib" not in json.dumps(mounts)
    for where, size in (("/tmp", 256 * 2**20), ("/home/sandbox", 512 * 2**20),
                        ("/dev/shm", 64 * 2**20)):  # fmt: skip
        kind, _source, options = mounts[where]
        assert kind == "tmpfs" and "noexec" in options.split(","), (where, options)
        assert tmpfs_size(options) == size, (where, options)

    # ps lists it with its kernel id.
    row = next(row for row in listed() if row["name"] == name)
    assert row["backend"] == "runsc" and row["kernel_id"] == kernel.km.kernel_id
    assert row["memory_mib"] > 10 and row["uptime_s"] >= 0 and not row["pooled"]

    # Interrupt a busy cell: the kernel survives with a KeyboardInterrupt.
    msg_id, reply = kernel.interrupt_running_cell()
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["ename"] == "KeyboardInterrupt"

    # Restart: a new sandbox; the old one is gone with its state, bundle and cgroups.
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    wait_until(lambda: not any(alive(p) for p in pids), 10, "the old sandbox's processes to end")
    assert name not in runsc_ids() and name not in runsc_bundles() and not runsc_cgroup_dirs(name)
    new = kernel.sandbox_id
    assert new is not None and new != name and new in runsc_ids()
    new_pids = sandbox_pids(new)
    assert kernel.value("print(6 * 7)") == 42

    # Shutdown: nothing left, including the parent cgroup folders runsc would leave.
    kernel.stop()
    wait_until(lambda: not any(alive(p) for p in new_pids), 10, "the sandbox to end")
    assert new not in runsc_ids() and new not in runsc_bundles()
    assert not list((ROOT_STATE / "state").glob(f"{new}_*")), "runsc state files left behind"
    assert not runsc_cgroup_dirs(new), "cgroups left behind"
    assert new not in RunscBackend._sandboxes
    assert set(listening_ports(own_only=True)) <= set(before_ports), "host ports left open"


def small_kernelspec(tmp_path: Path, **config: object) -> KernelSpecManager:
    (tmp_path / "rs").mkdir()
    spec = build_kernelspec({**BACKEND_CONFIGS["runsc"], **config})
    (tmp_path / "rs" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(tmp_path)])


def test_caps_hold(tmp_path: Path) -> None:
    """The cgroup runsc made has the policy's caps, and each holds from inside: a fork loop
    meets EAGAIN (RLIMIT_NPROC), spinning processes are throttled to the CPU quota, and an
    allocation beyond the memory cap ends the sandbox (no swap)."""
    # nproc 16: forks of a kernel cost ~27 MiB each under gVisor, so 16 of them fit in 1 GiB.
    ksm = small_kernelspec(tmp_path, memory_limit="1g", cpu_limit=0.5, nproc_limit=16,
                           pids_limit=1000)  # fmt: skip
    with running_kernel(ksm, "rs") as kernel:
        km = kernel.km
        kc = kernel.kc
        name = kernel.sandbox_id
        cg = {
            c: Path(f"/sys/fs/cgroup/{c}/{CGROUP_PREFIX}{name}") for c in ("memory", "cpu", "pids")
        }
        assert int((cg["memory"] / "memory.limit_in_bytes").read_text()) == 2**30
        assert int((cg["memory"] / "memory.memsw.limit_in_bytes").read_text()) == 2**30
        assert int((cg["cpu"] / "cpu.cfs_quota_us").read_text()) == 50_000
        assert int((cg["cpu"] / "cpu.cfs_period_us").read_text()) == 100_000
        assert (cg["pids"] / "pids.max").read_text().strip() == "1000"
        assert kernel.value("import json, os; print(json.dumps(os.cpu_count()))") >= 1

        forks = kernel.value(
            "import os, json, errno, time, resource\n"
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
            "print(json.dumps([len(kids), err, resource.getrlimit(resource.RLIMIT_NPROC)[0]]))",
            timeout=120,
        )
        assert forks[1] == "EAGAIN" and 0 < forks[0] < forks[2] == 16, forks

        cpuacct = Path(f"/sys/fs/cgroup/cpuacct/{CGROUP_PREFIX}{name}/cpuacct.usage")
        throttled = _throttled(cg["cpu"])
        usage0, t0 = int(cpuacct.read_text()), time.monotonic()
        kernel.value(
            "import multiprocessing as mp, time\n"
            "def burn(seconds):\n"
            "    end = time.monotonic() + seconds\n"
            "    while time.monotonic() < end:\n"
            "        pass\n"
            "procs = [mp.get_context('fork').Process(target=burn, args=(4,)) for _ in range(2)]\n"
            "[p.start() for p in procs]; [p.join() for p in procs]\n"
            "print(len(procs))\n",
            timeout=120,
        )
        cpus = (int(cpuacct.read_text()) - usage0) / 1e9 / (time.monotonic() - t0)
        assert _throttled(cg["cpu"]) > throttled, "spinning processes were never throttled"
        assert cpus < 0.75, f"the sandbox used {cpus:.2f} CPUs with cpu_limit 0.5"

        # Beyond the memory cap (no swap): the allocations reach it, never pass it, and the
        # sandbox ends there (the OOM killer takes the sentry, which holds the memory).
        kc.execute(
            "chunks = []\nwhile True:\n"
            "    chunks.append(bytearray(32 << 20)); print(len(chunks) * 32, flush=True)\n"
        )
        reached = 0
        deadline = time.monotonic() + 120
        while km.is_alive():
            assert time.monotonic() < deadline, "the sandbox did not end at its memory cap"
            try:
                msg = kc.get_iopub_msg(timeout=0.2)
            except Exception:
                continue
            if msg["msg_type"] == "stream":
                reached = max(
                    [reached, *(int(x) for x in msg["content"]["text"].split() if x.isdigit())]
                )
        assert 512 < reached <= 1024, f"{reached} MiB allocated in a 1 GiB sandbox"
    assert not runsc_cgroup_dirs(str(name))


def test_host_pids_cap_ends_a_sandbox_that_reaches_it(tmp_path: Path) -> None:
    """The pids cgroup is the host's backstop: with RLIMIT_NPROC as high as pids_limit, a
    fork loop inside reaches the host limit first (each process inside costs several host
    tasks: stub process, sentry threads) and the whole sandbox ends there, never past it."""
    ksm = small_kernelspec(tmp_path, nproc_limit=200, pids_limit=200)
    with running_kernel(ksm, "rs") as kernel:
        km = kernel.km
        kc = kernel.kc
        pids = Path(f"/sys/fs/cgroup/pids/{CGROUP_PREFIX}{kernel.sandbox_id}")
        assert (pids / "pids.max").read_text().strip() == "200"
        kc.execute(
            "import os, time\nn = 0\nwhile True:\n    if os.fork() == 0:\n"
            "        time.sleep(60); os._exit(0)\n    n += 1; print(n, flush=True)\n"
        )
        forks, highest, deadline = 0, 0, time.monotonic() + 120
        while km.is_alive():
            assert time.monotonic() < deadline, "the sandbox outlived its host pids limit"
            try:
                highest = max(highest, int((pids / "pids.current").read_text()))
            except (OSError, ValueError):
                pass
            try:
                msg = kc.get_iopub_msg(timeout=0.05)
            except Exception:
                continue
            if msg["msg_type"] == "stream":
                forks = max(
                    [forks, *(int(x) for x in msg["content"]["text"].split() if x.isdigit())]
                )
        assert 0 < forks < 200, f"{forks} forks: the in-sandbox limit, not the host's, stopped it"
        assert highest <= 200, f"{highest} host tasks with pids_limit 200"


def test_gc_removes_sandboxes_of_dead_processes_only(tmp_path: Path) -> None:
    """A runsc sandbox whose Jupyter process died before its agent ran ('created', never
    started) cannot end itself: gc removes its state, bundle and cgroups; a live one stays."""
    from sandbox_kernel.backends.owner import LABEL_SERVER_PID, LABEL_SERVER_START

    dead = subprocess.Popen(["true"])
    dead.wait()
    runsc = find_runsc()
    policy = build_policy(image="sandbox-kernel/python:latest")
    created: dict[str, dict[str, str]] = {
        f"sk-test-orphan-{os.getpid()}": {
            **Owner.current().labels(), LABEL_SERVER_PID: str(dead.pid), LABEL_SERVER_START: "1"
        },
        f"sk-test-alive-{os.getpid()}": Owner.current().labels(),
    }  # fmt: skip
    try:
        for name, labels in created.items():
            bundle = ROOT_STATE / "bundles" / name
            bundle.mkdir(parents=True)
            config = oci_config(
                policy, rootfs=rootfs_for(policy.image).resolve(), command=["true"],
                annotations=labels, cgroups_path=f"/{CGROUP_PREFIX}{name}",
            )  # fmt: skip
            (bundle / "config.json").write_text(json.dumps(config))
            subprocess.run(
                runsc_argv(runsc, ROOT_STATE / "state", "create", "--bundle", str(bundle), name,
                           rootless=False),
                # The sandbox keeps the stdio it is given: no pipe we would wait on.
                check=True, timeout=60, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert runsc_cgroup_dirs(name)
        orphan, live = created
        r = cli("gc", timeout=120)
        assert r.returncode == 0, r.stderr
        assert orphan in r.stdout and live not in r.stdout
        assert (
            orphan not in runsc_ids()
            and orphan not in runsc_bundles()
            and not runsc_cgroup_dirs(orphan)
        )
        assert live in runsc_ids() and live in runsc_bundles() and runsc_cgroup_dirs(live)
    finally:
        for name in created:
            subprocess.run(
                runsc_argv(runsc, ROOT_STATE / "state", "delete", "--force", name, rootless=False),
                capture_output=True, timeout=60,
            )  # fmt: skip
            subprocess.run(["rm", "-rf", str(ROOT_STATE / "bundles" / name)], check=True)
            for d in runsc_cgroup_dirs(name):
                os.rmdir(d)


def test_server_killed_leaves_nothing_after_gc(tmp_path: Path) -> None:
    """A Jupyter process killed with SIGKILL: its sandboxes see their pipe close and end
    themselves (no process is left); gc then removes what a detached sandbox leaves (runsc's
    state, its cgroups, the bundle) and the warm pool's snapshot."""
    ksm_dir = tmp_path / "kernels"
    (ksm_dir / "rs").mkdir(parents=True)
    (ksm_dir / "rs" / "kernel.json").write_text(
        json.dumps(build_kernelspec({**BACKEND_CONFIGS["runsc"], "pool_size": 1}))
    )
    server = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom jupyter_client.kernelspec import KernelSpecManager\n"
         "from jupyter_client.manager import KernelManager\n"
         "km = KernelManager(kernel_name='rs', kernel_spec_manager=KernelSpecManager("
         f"kernel_dirs=[{str(ksm_dir)!r}]))\n"
         "km.start_kernel(); kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)\n"
         "from sandbox_kernel.pool import WarmPool\n"
         "while not any(p.ready for p in WarmPool._pools.values()): time.sleep(0.1)\n"
         "print(km.provisioner.sandbox_id, flush=True); time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    name = server.stdout.readline().strip()
    mine = {b for b in runsc_bundles() if b.startswith("sandbox-kernel-")}
    assert name in runsc_ids() and len(mine & runsc_ids()) >= 2, "the kernel and a pooled one"
    theirs = {b for b in mine if _server_pid(b) == server.pid}
    assert name in theirs and len(theirs) == 2
    pids = set().union(*(sandbox_pids(n) for n in theirs))
    snapshots = {s for s in runsc_images() if _server_pid(s, "images") == server.pid}
    assert len(snapshots) == 1, "its warm pool fills from a snapshot (root: pool_snapshots)"
    server.kill()
    server.wait()
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the orphaned sandboxes to end")
    r = cli("gc", timeout=120)
    assert r.returncode == 0, r.stderr
    assert not theirs & runsc_ids(), "runsc state of the dead server's sandboxes left behind"
    assert not any(runsc_cgroup_dirs(n) for n in theirs), "cgroups left behind"
    assert not theirs & runsc_bundles(), "bundles of the dead server left behind"
    assert not snapshots & runsc_images(), "the dead server's warm pool snapshot left behind"


def _throttled(cpu: Path) -> int:
    stats = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    return int(stats["nr_throttled"])


def _server_pid(name: str, kind: str = "bundles") -> int:
    """The server pid a bundle's annotations (or a snapshot's owner.json) name."""
    from sandbox_kernel.backends.owner import LABEL_SERVER_PID

    try:
        if kind == "images":
            labels = json.loads((ROOT_STATE / "images" / name / "owner.json").read_text())
        else:
            config = json.loads((ROOT_STATE / "bundles" / name / "config.json").read_text())
            labels = config.get("annotations", {})
    except (OSError, ValueError):
        return 0
    return int(labels.get(LABEL_SERVER_PID, 0))


def test_warm_pool_claims_and_drains(tmp_path: Path) -> None:
    """The warm pool works for runsc: a launch claims a pre-started sandbox, and draining the
    pool leaves no state, bundle, cgroup or process behind."""
    from sandbox_kernel.relay.thread import RelayThread

    ksm = small_kernelspec(tmp_path, pool_size=1, memory_limit="1536m")
    kernels: list[Kernel] = []
    try:
        for _ in range(2):
            kernels.append(ready_kernel(ksm, "rs"))
            pool = pool_of(kernels[-1].km)
            wait_until(lambda p=pool: bool(p.ready), 60, "the runsc warm pool to fill")  # type: ignore[misc]
        assert not kernels[0].km.provisioner.last_start_warm  # type: ignore[union-attr]
        assert kernels[1].km.provisioner.last_start_warm  # type: ignore[union-attr]
        assert kernels[1].value("import os; print(os.getuid())") == 1000
        pooled = [s.sandbox_id for s in pool.ready]
        assert pooled and set(pooled) <= runsc_ids()
    finally:
        for kernel in kernels:
            kernel.stop()
    RelayThread.get().submit(pool.drain()).result(timeout=60)
    for name in pooled:
        assert name not in RunscBackend._sandboxes and name not in runsc_ids()
        assert name not in runsc_bundles() and not runsc_cgroup_dirs(name)


def test_the_platform_setting_reaches_the_sandbox(tmp_path: Path) -> None:
    """platform=ptrace: the sandbox's own processes (sentry, gofer) run with
    --platform=ptrace, and the kernel works there; the attack catalogue runs under it in
    tests/security (runsc-ptrace)."""
    with running_kernel(small_kernelspec(tmp_path, platform="ptrace"), "rs") as kernel:
        name = str(kernel.sandbox_id)
        flags = set()
        for pid in processes_naming(name):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            flags |= {a.decode() for a in argv if a.startswith(b"--platform")}
        assert flags == {"--platform=ptrace"}, flags
        assert kernel.value("import os; print(os.getuid())") == 1000


def test_the_runtime_setting_picks_the_binary(tmp_path: Path) -> None:
    """runtime (runsc, or runsc-current: SANDBOX_KERNEL_TEST_RUNTIME) picks the runsc binary
    the sandbox's own processes (sentry, gofer) run, and the kernel works there."""
    runtime = str(BACKEND_CONFIGS["runsc"].get("runtime", "runsc"))
    expected = os.path.realpath(find_runsc(runtime))
    with running_kernel(small_kernelspec(tmp_path), "rs") as kernel:
        exes = set()
        for pid in processes_naming(str(kernel.sandbox_id)):
            try:
                exes.add(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                continue
        assert exes == {expected}, (runtime, exes)
        assert kernel.value("import os; print(os.getuid())") == 1000


def test_doctor_checks_the_runsc_backend() -> None:
    """`sandbox-kernel doctor --backend runsc` as root: every property enforced, a kernel
    starts, and every self-contained attack ends as documented: blocked, but for gVisor's own
    documented gaps (the Docker backend's)."""
    r = cli("doctor", "--backend", "runsc", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    enforced = checks["runsc enforces the policy here"]
    assert enforced["ok"] is True and enforced["detail"] == "every property", enforced
    attacks = checks["attack subset as documented"]
    assert attacks["ok"] is True and r.returncode == 0, attacks
    documented = attacks["detail"].split("documented gaps of runsc: ")[1]
    assert (
        set(documented.split(", "))
        == set(gaps_of("runsc", gvisor_release("runsc", DEFAULT_RUNTIME))) & SELF_CONTAINED
    ), attacks
    assert (
        "the warm pool restores its sandboxes from a snapshot"
        in (checks["runsc: host ready"]["detail"])
    )


def test_warm_pools_are_per_backend(tmp_path: Path) -> None:
    """A Docker kernelspec and a runsc one with the same policy, in one process: each launch
    claims only its own backend's warm sandboxes (the pool key names the backend)."""
    from sandbox_kernel.pool import WarmPool

    for name, config in (
        ("dk", {"pool_size": 1}),
        ("rs", {**BACKEND_CONFIGS["runsc"], "pool_size": 1}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path)])
    kernels: list[Kernel] = []
    try:
        for name in ("dk", "dk", "rs"):
            kernels.append(ready_kernel(ksm, name))
            wait_until(lambda: all(p.ready for p in WarmPool._pools.values() if not p.closed),
                       60, "the warm pools to fill")  # fmt: skip
        docker_warm, runsc_first = kernels[1], kernels[2]
        assert docker_warm.km.provisioner.last_start_warm  # type: ignore[union-attr]
        assert not runsc_first.km.provisioner.last_start_warm, "claimed another backend's sandbox"  # type: ignore[union-attr]
        assert runsc_first.sandbox_id in runsc_ids()
    finally:
        for kernel in kernels:
            kernel.stop()
        WarmPool.drain_all()
