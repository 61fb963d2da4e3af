"""The runsc backend rootless, as a real ordinary user (``rootless`` fixture: a system user
made for the test, the shared venv): `install --user`, `doctor`, `ps` and `gc` as that user;
the fail-closed refusal without a delegated cgroup; what runs with the gaps accepted
(per-process RLIMIT_AS, nothing of the host user's files, every process the user's own);
and, with a cgroup delegated to the user, the per-sandbox caps and the user's own total,
which the user cannot raise. Nothing is left behind (state, bundles, cgroups, processes).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_kernel.backends.cgroups import DELEGATED_PARENT, delegate_cgroups, remove_delegation
from sandbox_kernel.backends.runsc_inventory import sandbox_table
from sandbox_kernel.backends.runsc_snapshots import ROOTLESS_NO_SNAPSHOTS
from sandbox_kernel.security import ATTACKS
from sandbox_kernel.security.expectations import gaps_of
from tests.helpers import DEFAULT_RUNTIME, gvisor_release, wait_until
from tests.rootless import UNENFORCED_WITHOUT_CGROUPS, Rootless, UserKernel

SELF_CONTAINED = {a.id for a in ATTACKS if not a.needs}  # what doctor runs


@pytest.fixture
def delegated(rootless: Rootless) -> Iterator[dict[str, Path]]:
    """The user's delegated cgroup folders (3 GiB, 1.5 CPUs, 2000 tasks for all their
    sandboxes together), removed after the test."""
    made = delegate_cgroups(rootless.user.name, memory_bytes=3 * 2**30, cpus=1.5, pids=2000)
    yield made
    remove_delegation(rootless.user.name)
    assert not any(d.exists() for d in made.values()), "a sandbox cgroup kept the folder busy"


def refusal(rootless: Rootless, name: str = "rl") -> str:
    with pytest.raises(RuntimeError) as err:
        rootless.kernel(name)
    return str(err.value)


def test_install_as_an_ordinary_user(rootless: Rootless) -> None:
    r = rootless.user.cli("install", "--user", "--backend", "runsc")
    assert r.returncode == 0, r.stderr
    spec_file = rootless.user.home / ".local/share/jupyter/kernels/sandbox-python-runsc/kernel.json"
    assert spec_file.stat().st_uid == rootless.user.uid
    spec = json.loads(spec_file.read_text())
    assert spec["display_name"] == "Python 3 (sandboxed, runsc)"
    assert spec["metadata"]["kernel_provisioner"]["config"]["backend"] == "runsc"


def test_without_a_delegated_cgroup_the_limits_are_refused(rootless: Rootless) -> None:
    """Rootless runsc ignores cgroup limits: the default kernelspec refuses (fail closed),
    naming memory_limit, cpu_limit and pids_limit and how to delegate a cgroup, and nothing
    else; nothing is left behind."""
    why = refusal(rootless)
    for prop in UNENFORCED_WITHOUT_CGROUPS:
        assert f"{prop} (rootless runsc applies no cgroup limits" in why, why
    assert "fail closed" in why and "accept_unenforced=" in why
    assert f"{DELEGATED_PARENT}/{rootless.user.name}" in why, "the refusal says how to fix it"
    for enforced in ("network (", "host_files (", "seccomp (", "nproc_limit (", "tmp_size ("):
        assert enforced not in why, why
    assert not rootless.leftovers() and not rootless.user.processes()


def test_accepted_gaps_run_in_gvisor_as_the_user(rootless: Rootless) -> None:
    """With the cgroup gaps accepted: the kernel runs in gVisor as uid 1000 inside; each
    process is held to memory_limit of address space (an allocation past it fails inside,
    the kernel survives); every host process of the sandbox is the user's own, none root;
    the user's own files are not visible; ps lists it for the user (not for root); nothing
    is left after shutdown."""
    user = rootless.user
    (user.home / "my-secret.txt").write_text("the user's own file")
    kernel = rootless.kernel("rl-accepted")
    try:
        name = str(kernel.sandbox_id)
        inside = kernel.value(
            "import os, json, platform, resource\n"
            "try:\n    b = bytearray(3 * 2**30); big = 'allocated'\n"
            "except MemoryError:\n    big = 'MemoryError'\n"
            f"print(json.dumps([os.getuid(), platform.release(), big, "
            "resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC), "
            f"[os.path.exists(p) for p in ({str(user.home)!r}, "
            f"{str(user.home / 'my-secret.txt')!r}, '/tmp/sandbox-kernel-runsc-{user.uid}')]]))"
        )
        assert inside[0] == 1000 and inside[1] != os.uname().release, inside
        assert inside[2] == "MemoryError" and inside[3] == [2 * 2**30] * 2, inside
        assert inside[4] == [64, 64] and inside[5] == [False, False, False], inside
        assert kernel.value("print(6 * 7)") == 42, "the kernel survived its MemoryError"

        # Host side: the sandbox's processes (sentry, gofer; run detached, no runsc run
        # waits beside them) are all the user's.
        mine = user.processes()
        runsc = [p for p in mine if "runsc" in _cmdline(p)]
        assert len(runsc) >= 2, f"sandbox and gofer as the user: {mine}"
        as_root = [p for p in _all_pids() if name in _cmdline(p) and _uid(p) != user.uid]
        assert not as_root, f"processes of the user's sandbox not running as the user: {as_root}"
        state = rootless.state()
        assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (user.uid, 0o700)

        ps = user.cli("ps", "--json")
        assert ps.returncode == 0, ps.stderr
        rows = [r for r in json.loads(ps.stdout) if r["name"] == name]
        assert rows and rows[0]["backend"] == "runsc" and rows[0]["memory_mib"] > 10, ps.stdout
        assert "docker sandboxes not listed" in ps.stderr.lower(), "the user has no Docker socket"
        # Root's ps lists every user's sandboxes, rootless ones included, with their user.
        listed = [r for r in sandbox_table() if r.name == name]
        assert listed and listed[0].user == user.name, listed
        assert (listed[0].memory_mib or 0) > 10, listed
        denied = user.run("ls", "/run/sandbox-kernel/runsc/state")
        assert denied.returncode != 0, "the user can read root's runsc state"
    finally:
        kernel.stop()
    assert not rootless.leftovers() and not user.processes()


def test_delegated_cgroup_caps_each_sandbox(rootless: Rootless, delegated: dict[str, Path]) -> None:
    """With a cgroup delegated to the user, nothing needs accepting: each sandbox runs in a
    child of the user's folders with the policy's caps (fork loop: EAGAIN; spinning:
    throttled; memory: the sandbox ends at its cap), under the user's total, which the user
    cannot raise; the child is removed at shutdown."""
    user = rootless.user
    kernel = rootless.kernel("rl-small")
    try:
        name = str(kernel.sandbox_id)
        cg = {c: d / name for c, d in delegated.items()}
        assert int((cg["memory"] / "memory.limit_in_bytes").read_text()) == 2**30
        assert int((cg["cpu"] / "cpu.cfs_quota_us").read_text()) == 50_000
        assert (cg["pids"] / "pids.max").read_text().strip() == "1000"
        procs = {int(p) for p in (cg["memory"] / "cgroup.procs").read_text().split()}
        assert len(procs) >= 3 and all(_uid(p) == user.uid for p in procs), procs
        assert any("runsc-sandbox" in _cmdline(p) for p in procs), "the sentry is in it"

        raise_own = user.run("sh", "-c", f"echo 1 > {delegated['memory']}/memory.limit_in_bytes")
        assert raise_own.returncode != 0, "the user changed their own total limit"

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
            "print(json.dumps([len(kids), err]))",
            timeout=120,
        )
        assert forks[1] == "EAGAIN" and 0 < forks[0] < 16, forks

        throttled = _throttled(cg["cpu"])
        kernel.value(
            "import multiprocessing as mp, time\n"
            "def burn(seconds):\n"
            "    end = time.monotonic() + seconds\n"
            "    while time.monotonic() < end:\n"
            "        pass\n"
            "procs = [mp.get_context('fork').Process(target=burn, args=(3,)) for _ in range(2)]\n"
            "[p.start() for p in procs]; [p.join() for p in procs]\n"
            "print(len(procs))\n",
            timeout=120,
        )
        assert _throttled(cg["cpu"]) > throttled, "spinning processes were never throttled"

        reached = allocate_until_the_end(kernel)
        assert 512 < reached <= 1024, f"{reached} MiB allocated in a 1 GiB sandbox"
    finally:
        kernel.stop()
    assert not any(d.exists() for d in cg.values()), "the sandbox's cgroup was left behind"
    assert not rootless.leftovers() and not user.processes()


def test_the_users_total_bounds_their_sandboxes(rootless: Rootless) -> None:
    """The delegated folder's limit (root's) holds below a sandbox's own: a kernel with
    memory_limit 2 GiB under a user total of 1 GiB stops at the total and ends there."""
    user = rootless.user
    made = delegate_cgroups(user.name, memory_bytes=2**30, cpus=1.5, pids=2000)
    try:
        kernel = rootless.kernel("rl")  # memory_limit 2g
        try:
            name = str(kernel.sandbox_id)
            assert int((made["memory"] / name / "memory.limit_in_bytes").read_text()) == 2 << 30
            reached = allocate_until_the_end(kernel)
            assert 512 < reached <= 1024, f"{reached} MiB allocated under a 1 GiB user total"
        finally:
            kernel.stop()
    finally:
        remove_delegation(user.name)
    assert not any(d.exists() for d in made.values())
    assert not rootless.leftovers() and not user.processes()


def test_doctor_as_an_ordinary_user(rootless: Rootless, delegated: dict[str, Path]) -> None:
    """`sandbox-kernel doctor --backend runsc` as the user passes: with a delegated cgroup
    every property is enforced and every self-contained attack ends as documented."""
    r = rootless.user.cli("doctor", "--backend", "runsc", "--json", timeout=600)
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
    assert f"note: {ROOTLESS_NO_SNAPSHOTS}" in checks["runsc: host ready"]["detail"]
    assert not rootless.leftovers()


# Runs as the user: two kernels of a kernelspec with a warm pool (pool_snapshots at its
# default), each after the pool has filled; prints how each started and the log's notes.
POOL_SERVER = r"""
import json, logging, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from sandbox_kernel.pool import WarmPool
notes = []
class Notes(logging.Handler):
    def emit(self, record):
        notes.append(record.getMessage())
logging.getLogger().addHandler(Notes(logging.WARNING))
ksm = KernelSpecManager(kernel_dirs=[sys.argv[1]])
kms, starts = [], []
for _ in range(2):
    km = KernelManager(kernel_name="rl-pool", kernel_spec_manager=ksm)
    km.start_kernel()
    kms.append(km)
    starts.append([km.provisioner.last_start_warm, km.provisioner.last_start_restored])
    pool = next(iter(WarmPool._pools.values()))
    deadline = time.monotonic() + 120
    while not pool.ready and time.monotonic() < deadline:
        time.sleep(0.2)
print(json.dumps({"starts": starts, "notes": notes, "stats": WarmPool.stats()}), flush=True)
for km in kms:
    km.shutdown_kernel(now=True)
"""


def test_a_rootless_warm_pool_starts_fresh_sandboxes_and_says_why(rootless: Rootless) -> None:
    """Rootless runsc cannot restore a checkpoint: with pool_snapshots at its default, the
    pool starts its sandboxes afresh (the second kernel is warm, not restored), logs why
    once, and leaves nothing behind (no snapshot either)."""
    r = rootless.user.run(rootless.user.python, "-c", POOL_SERVER, str(rootless.kernels))
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found["starts"] == [[False, False], [True, False]], found
    assert found["stats"]["restores"] == 0 and found["stats"]["snapshots"] == 0, found
    notes = [n for n in found["notes"] if "snapshots" in n]
    assert notes == [f"warm pool: no snapshots: {ROOTLESS_NO_SNAPSHOTS}"], found["notes"]
    assert not list((rootless.state() / "images").glob("*")), "a rootless snapshot on disk"
    wait_until(lambda: not rootless.leftovers(), 30, "the user's sandboxes to be removed")


def test_doctor_without_delegation_reports_the_gaps(rootless: Rootless) -> None:
    r = rootless.user.cli("doctor", "--backend", "runsc", "--json", timeout=600)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    enforced = checks["runsc enforces the policy here"]
    assert enforced["ok"] is True, enforced
    assert re.search(r"NOT enforced: cpu_limit .*memory_limit .*pids_limit", enforced["detail"])
    assert checks["attack subset as documented"]["ok"] is True and r.returncode == 0
    assert not rootless.leftovers()


def test_gc_as_the_user_removes_what_a_dead_server_left(rootless: Rootless) -> None:
    """The user's Jupyter process is killed: its sandbox ends itself (its pipe closed) and
    the user's `sandbox-kernel gc` removes the bundle left behind."""
    import signal

    kernel = rootless.kernel("rl-accepted")
    name = str(kernel.sandbox_id)
    bundle = rootless.state() / "bundles" / name
    assert bundle.is_dir()
    os.killpg(kernel.server.pid, signal.SIGKILL)
    kernel.server.wait()
    kernel.kc.stop_channels()
    wait_until(lambda: not [p for p in rootless.user.processes() if name in _cmdline(p)], 30,
               "the orphaned sandbox to end itself")  # fmt: skip
    assert bundle.is_dir(), "nobody removed the bundle (the server died)"
    r = rootless.user.cli("gc")
    assert r.returncode == 0, r.stderr
    assert name in r.stdout and not bundle.exists()
    assert not rootless.leftovers() and not rootless.user.processes()


def allocate_until_the_end(kernel: UserKernel) -> int:
    """Allocate 32 MiB at a time until the sandbox ends; return the MiB reached."""
    kernel.kc.execute(
        "chunks = []\nwhile True:\n"
        "    chunks.append(bytearray(32 << 20)); print(len(chunks) * 32, flush=True)\n"
    )
    reached, deadline = 0, time.monotonic() + 120
    while kernel.alive():
        assert time.monotonic() < deadline, "the sandbox did not end at its memory cap"
        try:
            msg = kernel.kc.get_iopub_msg(timeout=0.2)
        except Exception:
            continue
        if msg["msg_type"] == "stream":
            reached = max(
                [reached, *(int(x) for x in msg["content"]["text"].split() if x.isdigit())]
            )
    return reached


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _uid(pid: int) -> int:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return -1


def _throttled(cpu: Path) -> int:
    stats = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    return int(stats["nr_throttled"])
