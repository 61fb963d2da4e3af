"""The runsc backend's snapshot-backed warm pool (root), with real runsc, ipykernel and
jupyter_client: the pool checkpoints one pre-initialised sandbox and restores its refills
and the launches that find it empty from that snapshot.

* two copies restored from one snapshot, compared from inside: what the claim renews
  (``random``, numpy's global generator, the session id and every message id, the kernel's
  ident) differs; what a sandbox draws itself (``os.urandom``) differs; each serves with
  its own key, which the other copy cannot find; what is documented as shared (the hash
  seed, the address-space layout) is shared;
* a burst through ``AsyncKernelManager``: every kernel is a restored sandbox;
* the snapshot is renewed after ``pool_snapshot_restores`` restores, and after
  ``pool_snapshot_age`` seconds, the old one deleted;
* a snapshot is never restored under a policy other than its own;
* a restore that fails falls back to a fresh sandbox;
* nothing is left (snapshot, bundles, state, cgroups) after a drain, after the Jupyter
  process exits, and after ``gc`` once it was killed.

The attack catalogue against a restored sandbox is in tests/security.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.backends.runsc import RunscBackend
from sandbox_kernel.backends.runsc_inventory import ROOT_STATE
from sandbox_kernel.backends.runsc_oci import CGROUP_PREFIX
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.pool import WarmPool
from sandbox_kernel.relay.thread import RelayThread
from tests.helpers import (
    BACKEND_CONFIGS,
    Kernel,
    alive,
    cli,
    listed,
    pool_of,
    ready_kernel,
    runsc_bundles,
    runsc_cgroup_dirs,
    runsc_ids,
    runsc_images,
    wait_until,
)

# numpy's random module imported while the pooled kernel initialises, so its global
# generator is in the snapshot too (the pool kernel imports nothing of the kind by itself;
# `import numpy` alone would not do: numpy loads numpy.random on first use).
WITH_NUMPY = "--IPKernelApp.exec_lines=import numpy.random"


def kernelspecs(
    tmp_path: Path, argv_extra: tuple[str, ...] = (), **config: Any
) -> KernelSpecManager:
    spec = build_kernelspec({**BACKEND_CONFIGS["runsc"], "pool_size": 1, **config})
    spec["argv"] = [*spec["argv"], *argv_extra]
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(tmp_path)])


class Kernels:
    """Kernels of one kernelspec started here, and the warm pool they share."""

    def __init__(self, ksm: KernelSpecManager, cwd: str | None = None) -> None:
        self.ksm = ksm
        self.cwd = cwd
        self.started: list[Kernel] = []

    def start(self) -> Kernel:
        kernel = ready_kernel(self.ksm, "snap", cwd=Path(self.cwd) if self.cwd else None)
        self.started.append(kernel)
        return kernel

    def pool(self) -> WarmPool:
        pool: WarmPool = pool_of(self.started[0].km)
        return pool

    def wait_ready(self) -> WarmPool:
        """Until the pool holds a ready sandbox (made from its snapshot, or fresh)."""
        pool = self.pool()
        wait_until(lambda: bool(pool.ready), 120, f"the warm pool to fill: {WarmPool.stats()}")
        return pool

    def stop(self) -> None:
        for kernel in self.started:
            kernel.stop()


@pytest.fixture
def kernels() -> Iterator[Callable[..., Kernels]]:
    made: list[Kernels] = []

    def make(ksm: KernelSpecManager, cwd: str | None = None) -> Kernels:
        made.append(Kernels(ksm, cwd))
        return made[-1]

    yield make
    for one in made:
        one.stop()
    WarmPool.drain_all()


def restored_from(kernel: Kernel) -> str:
    """The snapshot a kernel's sandbox was restored from ('' : it was started afresh)."""
    name = kernel.sandbox_id
    assert name is not None
    return RunscBackend._sandboxes[name].restored_from


def leftovers(names: set[str], snapshots: set[str]) -> list[str]:
    """What is left of these sandboxes and snapshots on the host."""
    found = [f"state {n}" for n in names & runsc_ids()]
    found += [f"bundle {n}" for n in names & runsc_bundles()]
    found += [f"cgroup {d}" for n in names for d in runsc_cgroup_dirs(n)]
    found += [f"state file {p.name}" for n in names for p in (ROOT_STATE / "state").glob(f"{n}_*")]
    found += [f"snapshot {s}" for s in snapshots & runsc_images()]
    return found


PROBE = r"""
import ctypes, json, os, random, sys
k = get_ipython().kernel
print(json.dumps({
    "numpy in the snapshot": "numpy.random" in sys.modules,
    "random": random.random(),
    "numpy random": float(sys.modules["numpy.random"].random()),
    "urandom": os.urandom(16).hex(),
    "session": k.session.session,
    "ident": k.ident,
    "key": k.session.key.decode(),
    "file key": json.load(open("/tmp/.sandbox-kernel/kernel.json"))["key"],
    "hash seed": hash("sandbox-kernel"),
    "libc printf": ctypes.cast(ctypes.CDLL(None).printf, ctypes.c_void_p).value,
    "pid": os.getpid(),
}))
"""

# Every place a kernel could read another sandbox's key from: files it can read anywhere
# writable or runtime-like, and every process's command line and environment it can see.
SCAN = r"""
import json, os
needle = NEEDLE.encode()
found = []
for top in ("/tmp", "/home", "/dev/shm", "/var/tmp", "/run", "/etc"):
    for root, _dirs, files in os.walk(top):
        for f in files:
            path = os.path.join(root, f)
            try:
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        found.append(path)
            except OSError:
                pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for what in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (pid, what), "rb") as fh:
                    if needle in fh.read():
                        found.append("/proc/%s/%s" % (pid, what))
            except OSError:
                pass
print(json.dumps(found))
"""


def probe(kernel: Kernel) -> dict[str, Any]:
    """The probe's facts, and the header of the kernel's reply to it."""
    chunks: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            chunks.append(msg["content"]["text"])

    reply = kernel.kc.execute_interactive(PROBE, timeout=60, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(chunks)
    facts: dict[str, Any] = json.loads("".join(chunks).strip().splitlines()[-1])
    facts["reply msg_id"] = reply["header"]["msg_id"]
    return facts


def finds(kernel: Kernel, needle: str) -> list[str]:
    # Sent reversed: the cell's own text (kept in IPython's history) must not hold it.
    found: list[str] = kernel.value(f"NEEDLE = {needle[::-1]!r}[::-1]\n" + SCAN, timeout=120)
    return found


def test_restored_copies_renew_what_they_share(
    tmp_path: Path, kernels: Callable[..., Kernels]
) -> None:
    """Two kernels restored from one snapshot: the state the claim renews differs between
    them (without ``renew`` in inside/prewarm_kernel.py, random, numpy's generator, the
    session id, the message ids and the ident are equal: scripts/weaken.py checks), each
    serves with its own key, which the other cannot find anywhere it can read; they are
    two sandboxes (names, cgroups, bundles), and what docs/security.md says stays shared
    is shared."""
    ks = kernels(kernelspecs(tmp_path, (WITH_NUMPY,)))
    first = ks.start()  # cold: the pool then makes its snapshot and restores a sandbox
    assert not first.km.provisioner.last_start_restored  # type: ignore[union-attr]
    ks.wait_ready()
    a = ks.start()
    b = ks.start()
    for kernel in (a, b):
        assert kernel.km.provisioner.last_start_restored  # type: ignore[union-attr]
    assert restored_from(a) == restored_from(b) != "", "copies of one snapshot"
    assert a.sandbox_id != b.sandbox_id
    for kernel in (a, b):  # each a sandbox of its own: its cgroup has the policy's caps
        memory = Path(f"/sys/fs/cgroup/memory/{CGROUP_PREFIX}{kernel.sandbox_id}")
        assert int((memory / "memory.limit_in_bytes").read_text()) == 2 * 2**30
        config = json.loads(
            (ROOT_STATE / "bundles" / str(kernel.sandbox_id) / "config.json").read_text()
        )
        assert config["linux"]["cgroupsPath"] == f"/{CGROUP_PREFIX}{kernel.sandbox_id}"

    one, two = probe(a), probe(b)
    assert one["numpy in the snapshot"] and two["numpy in the snapshot"]
    assert one["pid"] == two["pid"], "the same process, restored twice"
    renewed = ("random", "numpy random", "session", "ident")
    same = [k for k in renewed if one[k] == two[k]]
    assert not same, f"restored copies share {same}: the claim did not renew them"
    for facts in (one, two):
        assert facts["reply msg_id"].startswith(facts["session"] + "_")
    assert one["reply msg_id"] != two["reply msg_id"]
    assert one["urandom"] != two["urandom"], "each sandbox draws from the host"
    # Each serves with its own key (the one its client signs with: the reply above was
    # accepted), in its connection file too; the other copy finds it nowhere.
    for kernel, facts in ((a, one), (b, two)):
        assert facts["key"] == facts["file key"] == kernel.km.session.key.decode()
    assert one["key"] != two["key"]
    assert finds(a, one["key"]) == ["/tmp/.sandbox-kernel/kernel.json"], "control: the scan works"
    assert finds(a, two["key"]) == [], "a copy can read another copy's key"
    assert finds(b, one["key"]) == [], "a copy can read another copy's key"
    # Documented as shared by copies of one snapshot (docs/security.md, "Snapshots").
    assert one["hash seed"] == two["hash seed"]
    assert one["libc printf"] == two["libc printf"]

    # Drained: the pool's sandboxes and its snapshot go, with their state and cgroups.
    pool = ks.pool()
    names = {s.sandbox_id for s in pool.ready}
    snapshots = {s.id for s in pool.snapshots.kept}
    assert snapshots == {restored_from(a)}
    RelayThread.get().submit(pool.drain()).result(timeout=120)
    assert not leftovers(names, snapshots), leftovers(names, snapshots)


def test_a_restored_kernel_has_its_exchanges(
    tmp_path: Path, kernels: Callable[..., Kernels]
) -> None:
    """The relay's exchanges work in a restored sandbox as in a fresh one (its agent, and
    the socket the kernel's `sandboxed` module talks to, come from the snapshot): files
    copied in at the claim, a configured port exposed on the host, a file exported."""
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    (notebook / "data.csv").write_text("name,score\nada,3\n")
    ksm = kernelspecs(tmp_path, copy_in=["data.csv"], expose_ports=["8070"])
    ks = kernels(ksm, str(notebook))
    ks.start()
    ks.wait_ready()
    kernel = ks.start()
    assert kernel.km.provisioner.last_start_restored  # type: ignore[union-attr]
    assert kernel.value("import json\nprint(json.dumps(open('data.csv').read()))") == (
        "name,score\nada,3\n"
    )
    ports = kernel.value("import json, sandboxed\nprint(json.dumps(sandboxed.ports()))")
    assert ports == {"8070": kernel.km.provisioner.exposed_ports()[8070]}  # type: ignore[union-attr]
    kernel.run("open('result.txt', 'w').write('restored')")
    path = kernel.value("import json, sandboxed\nprint(json.dumps(sandboxed.export('result.txt')))")
    assert (notebook / path).read_text() == "restored"


def test_a_burst_is_served_by_restores(tmp_path: Path, kernels: Callable[..., Kernels]) -> None:
    """N kernels requested at once through AsyncKernelManager, after the pool has its
    snapshot: every one is a sandbox restored from it (one was ready, the others restored on
    the spot), all answer, and shut down they leave nothing."""
    n = 5
    ks = kernels(kernelspecs(tmp_path))
    ks.start()
    pool = ks.wait_ready()
    snapshot = pool.snapshots.current
    assert snapshot is not None

    async def burst() -> list[AsyncKernelManager]:
        kms = [AsyncKernelManager(kernel_name="snap", kernel_spec_manager=ks.ksm) for _ in range(n)]
        await asyncio.gather(*(km.start_kernel() for km in kms))
        for km in kms:
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=60)
            finally:
                kc.stop_channels()
        return kms

    async def shutdown(kms: list[AsyncKernelManager]) -> None:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms))

    kms = asyncio.run(burst())
    try:
        names = {km.provisioner.sandbox_id for km in kms}  # type: ignore[union-attr]
        restored = [km.provisioner.last_start_restored for km in kms]  # type: ignore[union-attr]
        assert all(restored), restored
        assert {RunscBackend._sandboxes[str(name)].restored_from for name in names} == {snapshot.id}
        assert len(names) == n
    finally:
        asyncio.run(shutdown(kms))
    assert not leftovers({str(x) for x in names}, set()), "the burst's sandboxes left behind"


def test_the_snapshot_is_renewed_after_its_restores(
    tmp_path: Path, kernels: Callable[..., Kernels]
) -> None:
    """pool_snapshot_restores=2: the third restore reads a new snapshot, made from a new
    pre-initialised sandbox, and the old one is deleted from disk once no restore reads it."""
    ks = kernels(kernelspecs(tmp_path, pool_snapshot_restores=2))
    ks.start()
    pool = ks.wait_ready()  # restore 1 of the first snapshot
    first = pool.snapshots.current
    assert first is not None
    a = ks.start()  # claims it; the refill is restore 2
    pool = ks.wait_ready()
    b = ks.start()  # claims that; the refill needs a new snapshot
    pool = ks.wait_ready()
    second = pool.snapshots.current
    assert second is not None and second.id != first.id
    assert restored_from(a) == restored_from(b) == first.id
    ready = pool.ready[0]
    assert ready.restored and RunscBackend._sandboxes[ready.sandbox_id].restored_from == second.id
    wait_until(lambda: first.id not in runsc_images(), 30, "the old snapshot to be deleted")
    assert second.id in runsc_images()


def test_the_snapshot_is_renewed_after_its_age(
    tmp_path: Path, kernels: Callable[..., Kernels]
) -> None:
    """pool_snapshot_age=5: the first restore after the snapshot is 5 s old reads a new
    snapshot (the old one served one restore only), and the old one is deleted."""
    age = 5.0
    ks = kernels(kernelspecs(tmp_path, pool_snapshot_age=age))
    ks.start()
    pool = ks.wait_ready()  # restore 1 of the first snapshot (just made: never too old)
    first = pool.snapshots.current
    assert first is not None
    # The pool's clock is the relay loop's, time.monotonic().
    time.sleep(max(0.0, first.born + age - time.monotonic()) + 0.5)
    a = ks.start()  # claims it; the refill finds the snapshot too old
    pool = ks.wait_ready()
    second = pool.snapshots.current
    assert second is not None and second.id != first.id, "the snapshot outlived its age"
    assert restored_from(a) == first.id and first.restores == 1
    ready = pool.ready[0]
    assert ready.restored and RunscBackend._sandboxes[ready.sandbox_id].restored_from == second.id
    wait_until(lambda: first.id not in runsc_images(), 30, "the old snapshot to be deleted")


def test_a_snapshot_is_not_restored_under_another_policy(
    tmp_path: Path, kernels: Callable[..., Kernels]
) -> None:
    """The backend refuses to restore a pool's snapshot under another policy (here a lower
    RLIMIT_NPROC, which the snapshot's processes would not have: they keep the limits they
    were started with), and leaves nothing of the attempt. Pools are keyed by policy, so
    this is the lock behind them."""
    ks = kernels(kernelspecs(tmp_path))
    ks.start()
    pool = ks.wait_ready()
    snapshot = pool.snapshots.current
    assert snapshot is not None
    other = dataclasses.replace(pool.policy, nproc=pool.policy.nproc // 2)
    name = f"sandbox-kernel-test-{secrets.token_hex(4)}"
    attempt = pool.backend.restore(
        snapshot.id, other, pool.preflight, owner=Owner.current(pooled=True), name=name
    )
    try:
        with pytest.raises(SandboxError, match="another policy"):
            RelayThread.get().submit(attempt).result(timeout=120)
    finally:
        RelayThread.get().submit(pool.backend.remove(name)).result(timeout=120)
    assert not leftovers({name}, set()), leftovers({name}, set())
    assert snapshot.id in runsc_images(), "the refusal left the pool's snapshot alone"


def test_a_failed_restore_falls_back_to_a_fresh_sandbox(
    tmp_path: Path,
    kernels: Callable[..., Kernels],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The snapshot's image is gone from under the pool: the next restore fails, is logged,
    and the pool starts a fresh pre-initialised sandbox instead (never a weaker one: the
    kernel claimed from it is checked as any other and runs as uid 1000 in gVisor)."""
    ks = kernels(kernelspecs(tmp_path))
    ks.start()
    pool = ks.wait_ready()
    broken = pool.snapshots.current
    assert broken is not None
    for f in (ROOT_STATE / "images" / broken.id / "image").iterdir():
        f.unlink()
    with caplog.at_level(logging.WARNING):
        ks.start()  # claims the ready (restored) one; the refill's restore fails
        pool = ks.wait_ready()
    assert any("restoring a sandbox from snapshot" in r.getMessage() for r in caplog.records)
    assert not pool.ready[0].restored, "the refill is a fresh sandbox"
    assert not pool.snapshots.off, "one failure retires the snapshot, not the feature"
    fresh = ks.start()
    assert fresh.km.provisioner.last_start_warm  # type: ignore[union-attr]
    assert not fresh.km.provisioner.last_start_restored  # type: ignore[union-attr]
    facts = fresh.value(
        "import json, os, platform\nprint(json.dumps([os.getuid(), platform.release()]))"
    )
    assert facts[0] == 1000 and facts[1] != os.uname().release
    wait_until(lambda: broken.id not in runsc_images(), 30, "the broken snapshot to be deleted")


# Runs as a Jupyter process of its own: one kernel from the snapshot kernelspec, then waits
# for its warm pool (a restored sandbox and the snapshot), prints their names, and either
# exits (atexit drains the pool) or waits to be killed.
SERVER = r"""
import json, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from sandbox_kernel.pool import WarmPool
km = KernelManager(kernel_name="snap", kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.start_kernel(); kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
pool = next(iter(WarmPool._pools.values()))
while not pool.ready: time.sleep(0.1)
print(json.dumps({"kernel": km.provisioner.sandbox_id, "pooled": [s.sandbox_id for s in pool.ready],
                  "restored": [s.restored for s in pool.ready],
                  "snapshots": [s.id for s in pool.snapshots.kept]}), flush=True)
if sys.argv[2] == "exit":
    kc.stop_channels()
    sys.exit(0)  # no shutdown_kernel: atexit removes the kernel's sandbox, the pool and its snapshot
time.sleep(600)
"""


def server(tmp_path: Path, how: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    ksm = kernelspecs(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, ksm.kernel_dirs[0], how], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the server did not start its kernel and pool"
    found: dict[str, Any] = json.loads(line)
    assert found["restored"] == [True] and len(found["snapshots"]) == 1, found
    return proc, found


def test_nothing_is_left_after_the_server_exits(tmp_path: Path) -> None:
    """A Jupyter process that exits without shutting anything down: its atexit handlers
    remove the kernel's sandbox, the pool's restored sandbox and the snapshot."""
    proc, found = server(tmp_path, "exit")
    assert proc.wait(timeout=120) == 0
    names = {found["kernel"], *found["pooled"]}
    assert not leftovers(names, set(found["snapshots"])), leftovers(names, set(found["snapshots"]))


def test_gc_removes_a_killed_servers_snapshot_and_sandboxes(tmp_path: Path) -> None:
    """A Jupyter process killed with SIGKILL: its sandboxes end themselves (their pipe
    closes), and `sandbox-kernel gc` removes their state, cgroups and bundles and the warm
    pool's snapshot, which `ps` listed until then."""
    proc, found = server(tmp_path, "kill")
    names = {found["kernel"], *found["pooled"]}
    snapshots = set(found["snapshots"])
    rows = [r for r in listed() if r["name"] in snapshots]
    assert len(rows) == 1 and rows[0]["kind"] == "snapshot" and rows[0]["server_pid"] == proc.pid
    assert 20 < rows[0]["disk_mib"] < 200, rows[0]
    pids = {int(p) for n in names for d in runsc_cgroup_dirs(n) if "/memory/" in d
            for p in Path(d, "cgroup.procs").read_text().split()}  # fmt: skip
    assert pids
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the orphaned sandboxes to end")
    assert snapshots <= runsc_images(), "nothing removes it but gc"
    r = cli("gc", timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(s in r.stdout for s in snapshots), r.stdout
    assert not leftovers(names, snapshots), leftovers(names, snapshots)
