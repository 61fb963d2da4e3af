"""gVisor lab: where an idle sandboxed kernel's host memory and CPU go, which runsc flags
and kernel settings change them, whether checkpoint/restore works, and where a cell's and
an output's time goes (issue 11; findings in docs/performance-research.md).

    sudo .venv/bin/python benchmarks/gvisor_lab.py breakdown [--claim] [--flag=...]
    sudo .venv/bin/python benchmarks/gvisor_lab.py memory --n 30 [--claim|--cold] [--parallel]
         [--flag=--directfs=false] [--kernel-env MALLOC_ARENA_MAX=2] [--run-arg=--detach]
    sudo .venv/bin/python benchmarks/gvisor_lab.py local --n 30
    sudo .venv/bin/python benchmarks/gvisor_lab.py docker --n 30 [--runc]
    sudo .venv/bin/python benchmarks/gvisor_lab.py isolation [--flag=...]
    sudo .venv/bin/python benchmarks/gvisor_lab.py snapshot --n 10 --claim --uncompressed
         [--reseed] [--parallel] [--flag=...]
    sudo .venv/bin/python benchmarks/gvisor_lab.py cells [--flag=--platform=ptrace]
         [--kernel-arg=--HistoryManager.hist_file=:memory:]
    sudo .venv/bin/python benchmarks/gvisor_lab.py profile --workload cells|print --out DIR
    sudo .venv/bin/python benchmarks/gvisor_lab.py relay-profile

Every command prints one JSON object (``--json FILE`` also writes it).

Sandboxes are started the way the Docker-free runsc backend starts them (root mode):
``runsc --root <lab>/state <its RUNSC_FLAGS> [--flag ...] run`` (a later flag overrides an
earlier one) on the bundle its ``oci_config`` writes (read-only image root filesystem, no
host mount, size-capped tmpfs, our seccomp profile, a memory/CPU/pids cgroup of its own;
the agent root of the sandbox's kernel, the kernel under uid 1000), the agent delivered
over stdin and driven with the real ``AgentSession``.
Each sandbox then holds a pre-initialised ipykernel exactly as the warm pool does
(``sandbox_kernel/prewarm.py``); ``--claim`` also hands it a key, opens the host listeners and
waits for a ``kernel_info_reply`` (a claimed, idle kernel).

Memory is reported three ways, since PSS alone divides shared pages between sandboxes
and systrap's stub processes share one address space (summing their smaps counts it
again; ``kcmp`` tells them apart):

* host memory in use: ``MemTotal - MemAvailable`` (medians of 5 samples) before and after
  starting N kernels and after removing them, per kernel (nothing is dropped; on a shared
  machine other work is noise in this figure);
* the sandboxes' own memory cgroups (v1: usage, rss, shmem = the sentry's memory file,
  kmem), per kernel, plus the PSS of their host processes outside the cgroup;
* PSS of every host process, each address space counted once.

Idle CPU is the sandboxes' cpuacct time over ``--settle`` seconds after they started.

``local`` starts the host's ipykernel N times, each in a memory cgroup of its own (the
benchmark's "local" kernel, the baseline); ``docker`` starts N cold kernels through the
provisioner and Docker (today's path). ``isolation`` runs every attack of the catalogue
that needs no test host in a sandbox started with the given flags. ``snapshot``
checkpoints a pre-initialised sandbox, restores it N times (timed), measures the restored
sandboxes, claims two copies and compares what should differ between them (random state,
ids, keys); ``--reseed`` renews that state on claim. ``cells`` times a claimed kernel
(syscall, imports, trivial cells, a 50 MiB print, idle CPU). ``profile`` takes a CPU
profile of the sentry with ``runsc --profile`` (loosens the sandbox: lab only; needs
``go tool pprof``). ``relay-profile`` profiles the host relay's thread during a 50 MiB
print from a Docker runc kernel.

Every sandbox, cgroup and bundle is removed at exit. Needs root, runsc, Docker for
``docker``/``relay-profile``, and the image's exported root filesystem (``sandbox-kernel
image export-rootfs``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import kernel_timing  # noqa: E402
from kernel_timing import cell_rtts, drain  # noqa: E402

from sandbox_kernel.backends.runsc_oci import oci_config  # noqa: E402
from sandbox_kernel.backends.runsc_tool import RUNSC_FLAGS, find_runsc, runsc_argv  # noqa: E402
from sandbox_kernel.bundle import agent_payload, bootstrap_command  # noqa: E402
from sandbox_kernel.image.recipe import DEFAULT_IMAGE  # noqa: E402
from sandbox_kernel.image.rootfs import check_rootfs, rootfs_for  # noqa: E402
from sandbox_kernel.inside.protocol import INSIDE_PORTS  # noqa: E402
from sandbox_kernel.kernelspec import KERNEL_ARGV  # noqa: E402
from sandbox_kernel.policy import (  # noqa: E402
    INSIDE_CONNECTION_FILE,
    SandboxPolicy,
    build_policy,
)
from sandbox_kernel.prewarm import (  # noqa: E402
    PREWARM_CODE,
    placeholder_connection,
    prewarm_command,
)
from sandbox_kernel.relay.listeners import HostListeners  # noqa: E402
from sandbox_kernel.relay.session import AgentSession  # noqa: E402
from sandbox_kernel.relay.thread import RelayThread  # noqa: E402

CGROUP_PREFIX = "sk-lab-"
MiB = 2**20
LOG = logging.getLogger("gvisor-lab")


# What a claim would have to renew in a kernel restored from a snapshot (every copy of
# one snapshot starts with the same state): the `random` module's generator (numpy's
# too, if the snapshot had imported it), the session id that prefixes every message id,
# and the kernel's id in its IOPub topics. Inserted right after the claim's line is read.
RESEED = """\
import random, uuid
random.seed()
if "numpy.random" in sys.modules:
    sys.modules["numpy.random"].seed()
app.session.session = str(uuid.uuid4())
app.kernel.ident = str(uuid.uuid4())
"""
_CLAIM_LINE = "spec = json.loads(line)\n"
assert _CLAIM_LINE in PREWARM_CODE
RESEEDING_PREWARM_CODE = PREWARM_CODE.replace(_CLAIM_LINE, _CLAIM_LINE + RESEED)


# -- the bundle ---------------------------------------------------------------------------
def bundle_config(
    policy: SandboxPolicy, rootfs: Path, command: list[str], cgroup: str
) -> dict[str, Any]:
    """The runsc backend's own bundle (root mode): ``backends.runsc_oci.oci_config``."""
    return oci_config(policy, rootfs=rootfs, command=command, annotations={}, cgroups_path=cgroup)


# -- host memory ------------------------------------------------------------------------
def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        out[name] = int(value.split()[0])
    return out


def host_in_use_kib() -> int:
    """Memory the host cannot hand out without swapping or killing: MemTotal - MemAvailable
    (shmem such as gVisor's memory file counts; clean page cache does not)."""
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"]


MEMINFO_KEYS = ("AnonPages", "Shmem", "Cached", "PageTables", "SUnreclaim", "KernelStack")


def daemons_rss_kib() -> int:
    """RSS of dockerd and containerd (they keep per-container state)."""
    total = 0
    for name in ("dockerd", "containerd"):
        pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
        total += sum(status_fields(int(p)).get("VmRSS", 0) for p in pids.split())
    return total


def settle_in_use(seconds: float = 3.0, samples: int = 5) -> int:
    """Median of a few samples of :func:`host_in_use_kib` (smooths other helpers' spikes)."""
    values = []
    for _ in range(samples):
        values.append(host_in_use_kib())
        time.sleep(seconds / samples)
    return int(statistics.median(values))


SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def smaps_by_kind(pid: int) -> dict[str, dict[str, int]]:
    """Per mapping kind (anon, shmem = memfd or /dev/zero or SysV, file, stack/heap/vdso):
    the smaps fields in KiB, summed."""
    kinds: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
            path = head[5].strip() if len(head) > 5 else ""
            if not path:
                kind = "anon"
            elif path.startswith("/memfd:") or path.startswith("/dev/zero") or "SYSV" in path:
                kind = "shmem:" + path.split(" ")[0]
            elif path.startswith("["):
                kind = "anon" if path in ("[heap]", "[stack]") else "special"
            else:
                kind = "file"
            current = kinds.setdefault(kind, dict.fromkeys(SMAPS_FIELDS, 0))
        elif current is not None and head and head[0].rstrip(":") in SMAPS_FIELDS:
            current[head[0].rstrip(":")] += int(head[1])
    return kinds


def status_fields(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPTE", "Threads")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cgroup_dirs(name: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return [d / (CGROUP_PREFIX + name) for d in base.iterdir() if d.is_dir()]


def memcg(name: str) -> Path:
    """The memory cgroup (v1) of a lab sandbox or local kernel."""
    return Path("/sys/fs/cgroup/memory") / (CGROUP_PREFIX + name)


def join_cgroup(d: Path) -> None:
    """In a child before exec: move this process into cgroup folder ``d``."""
    (d / "cgroup.procs").write_text(str(os.getpid()))


def cgroup_pids(d: Path) -> list[int]:
    try:
        text = (d / "cgroup.procs").read_text()
    except OSError:
        return []
    return sorted(int(p) for p in text.split())


def cgroup_memory(d: Path) -> dict[str, int]:
    """A memory cgroup (v1): usage and the memory.stat totals, in bytes."""
    out: dict[str, int] = {}
    try:
        out["usage"] = int((d / "memory.usage_in_bytes").read_text())
        for line in (d / "memory.stat").read_text().splitlines():
            key, value = line.split()
            if key in ("rss", "cache", "shmem", "mapped_file", "active_file", "inactive_file"):
                out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


_libc: Any = None


def same_mm(a: int, b: int) -> bool:
    """Whether two processes share one address space (kcmp KCMP_VM). gVisor's systrap stubs
    are clones sharing their address space: summing their smaps counts each page again."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 312, "aarch64": 272}[platform.machine()]  # SYS_kcmp
    return bool(_libc.syscall(nr, a, b, 1, 0, 0) == 0)  # KCMP_VM


def distinct_mms(pids: Iterable[int]) -> list[int]:
    """One pid per address space."""
    kept: list[int] = []
    for pid in pids:
        if not any(same_mm(pid, k) for k in kept):
            kept.append(pid)
    return kept


def pss_kib(pids: Iterable[int]) -> int:
    """PSS of a set of processes, each address space counted once."""
    return sum(f["Pss"] for pid in distinct_mms(pids) for f in smaps_by_kind(pid).values())


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cgroup_cpu(d: Path) -> float:
    """CPU seconds of a cpuacct cgroup (v1)."""
    try:
        return int((d / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return 0.0


def cpu_seconds(box: Sandbox) -> float:
    """CPU time a sandbox has used so far: its cpuacct cgroup (sentry, gofer, stubs: the
    application runs in the stubs) plus the ``runsc run``/``restore`` process."""
    cg = Path("/sys/fs/cgroup/cpuacct") / (CGROUP_PREFIX + box.name)
    return cgroup_cpu(cg) + proc_cpu(box.proc.pid)


def kmem_bytes(d: Path) -> int:
    try:
        return int((d / "memory.kmem.usage_in_bytes").read_text())
    except (OSError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (ps -o pid= --ppid, recursively)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        kids = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True
        ).stdout
        todo.extend(int(k) for k in kids.split())
    return found


# -- one sandbox ----------------------------------------------------------------------------
@dataclass
class Lab:
    """A private runsc root, bundles and cgroups under one temporary folder."""

    flags: tuple[str, ...] = ()
    run_args: tuple[str, ...] = ()  # e.g. --detach: no `runsc run` process stays
    kernel_env: dict[str, str] = field(default_factory=dict)
    runsc_env: dict[str, str] = field(default_factory=dict)
    reseed: bool = False  # the pool kernel renews its random state and ids on claim
    kernel_args: tuple[str, ...] = ()  # appended to the kernel's command line
    policy: SandboxPolicy = field(default_factory=lambda: build_policy(image=DEFAULT_IMAGE))
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sk-gvisor-lab-")))
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rootfs = check_rootfs(rootfs_for(DEFAULT_IMAGE))
        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "bundles").mkdir(exist_ok=True)
        self.relay = RelayThread.get()

    def runsc(self, *args: str, flags: Iterable[str] | None = None) -> list[str]:
        """The runsc backend's own command line (root mode) on the lab's state, with
        ``flags`` (default: the lab's) after the backend's, so they override them."""
        extra = self.flags if flags is None else tuple(flags)
        state = self.dir / "state"
        return runsc_argv(find_runsc(), state, *args, rootless=False, flags=(*RUNSC_FLAGS, *extra))

    def env(self) -> dict[str, str]:
        return {**self.policy.kernel_env({}, {}), **self.kernel_env}

    def bundle(self, name: str, command: list[str]) -> Path:
        bundle = self.dir / "bundles" / name
        bundle.mkdir()
        config = bundle_config(self.policy, self.rootfs, command, "/" + CGROUP_PREFIX + name)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    def spawn(self, name: str, args: list[str]) -> Sandbox:
        """``runsc <args>`` with two pipes as the container's stdin and stdout, attached to
        a fresh AgentSession on the relay loop."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        bundle = self.dir / "bundles" / name
        with open(bundle / "stderr", "ab") as err:
            proc = subprocess.Popen(
                args,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=err,
                cwd="/",
                start_new_session=True,
                env={**os.environ, **self.runsc_env},
            )
        os.close(stdin_r)
        os.close(stdout_w)
        session = AgentSession(name, console=lambda _d: None, log=LOG)
        self.relay.submit(session.attach_pipes(stdin_w, stdout_r)).result(timeout=30)
        box = Sandbox(self, name, proc, session)
        self.sandboxes[name] = box
        return box

    def start(self, name: str | None = None) -> Sandbox:
        """A sandbox with its agent up (hello received)."""
        name = name or f"lab-{secrets.token_hex(4)}"
        self.bundle(name, bootstrap_command())
        bundle = str(self.dir / "bundles" / name)
        box = self.spawn(name, self.runsc("run", *self.run_args, "--bundle", bundle, name))
        box.call(box.boot_agent(), timeout=60)
        return box

    def start_prewarmed(self, name: str | None = None) -> Sandbox:
        box = self.start(name)
        box.call(box.prewarm(), timeout=120)
        return box

    def start_kernel(self, cold: bool) -> tuple[Sandbox, Any]:
        """A claimed kernel that has answered kernel_info: pre-initialised then claimed
        (the warm pool's way), or ``cold`` (``python3 -m ipykernel_launcher`` at claim)."""
        box = self.start() if cold else self.start_prewarmed()
        return box, box.claim()

    def checkpoint(self, box: Sandbox, image: Path, *extra: str) -> float:
        """``runsc checkpoint`` of a sandbox into folder ``image``; the sandbox ends. Seconds."""
        t0 = time.monotonic()
        out = subprocess.run(
            self.runsc("checkpoint", *extra, "--image-path", str(image), box.name),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"runsc checkpoint failed: {out.stderr.strip()[-2000:]}")
        box.proc.wait(timeout=30)
        return time.monotonic() - t0

    def restore(self, image: Path, name: str | None = None, *extra: str) -> Sandbox:
        """A new sandbox restored from ``image`` (``runsc restore`` on a bundle of the same
        shape, its own name and cgroup, new stdin/stdout pipes). The agent inside is the
        checkpointed one: no agent is sent and no hello comes."""
        name = name or f"lab-{secrets.token_hex(4)}"
        bundle = self.bundle(name, bootstrap_command())
        box = self.spawn(
            name,
            self.runsc(
                "restore", *extra, "--image-path", str(image), "--bundle", str(bundle), name
            ),
        )
        box.session.ready = True  # frames may flow: the agent is already running
        return box

    def remove_all(self) -> None:
        for box in list(self.sandboxes.values()):
            box.remove()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Sandbox:
    lab: Lab
    name: str
    proc: subprocess.Popen[bytes]
    session: AgentSession
    listeners: HostListeners | None = None
    key: str = ""
    hello: dict[str, Any] = field(default_factory=dict)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return self.lab.relay.submit(coro).result(timeout=timeout)

    async def boot_agent(self) -> None:
        assert self.session.hello is not None
        # As the runsc backend: the agent is root of the sandbox's own kernel and runs the
        # kernel under the policy's uid.
        payload = agent_payload(escaped_stdin=False, kernel_user=self.lab.policy.user)
        self.session.send_agent(payload)
        self.hello = await self.session.hello

    def kernel_argv(self) -> list[str]:
        argv = [INSIDE_CONNECTION_FILE if a == "{connection_file}" else a for a in KERNEL_ARGV]
        return argv + list(self.lab.kernel_args)

    async def prewarm(self) -> None:
        cmd = prewarm_command(self.kernel_argv())
        assert cmd is not None
        if self.lab.reseed:
            cmd[2] = RESEEDING_PREWARM_CODE
        await self.session.prewarm(
            {
                "argv": cmd,
                "env": self.lab.env(),
                "cwd": self.lab.policy.home,
                "connection_file": INSIDE_CONNECTION_FILE,
                "connection": placeholder_connection(),
            }
        )

    async def _claim(self, key: str) -> dict[str, int]:
        env = self.lab.env()
        self.session.send_control(
            {
                "op": "start",
                "exposed": {},
                "argv": self.kernel_argv(),
                "env": env,
                "cwd": env["HOME"],
                "connection_file": INSIDE_CONNECTION_FILE,
                "connection": {
                    **INSIDE_PORTS,
                    "ip": "127.0.0.1",
                    "transport": "tcp",
                    "key": key,
                    "signature_scheme": "hmac-sha256",
                    "kernel_name": "",
                },
            }
        )
        assert self.session.started is not None
        await self.session.started
        listeners = HostListeners(INSIDE_PORTS)
        await listeners.open()
        listeners.session = self.session
        self.listeners = listeners
        return dict(listeners.ports)

    def claim(self) -> Any:
        """Hand the pre-initialised kernel its key; return a started BlockingKernelClient
        that has had its kernel_info_reply."""
        from jupyter_client.blocking.client import BlockingKernelClient

        self.key = secrets.token_hex(32)
        ports = self.call(self._claim(self.key))
        kc = BlockingKernelClient()
        info: Any = {**ports, "ip": "127.0.0.1", "transport": "tcp", "key": self.key}
        info["signature_scheme"] = "hmac-sha256"
        kc.load_connection_info(info)
        kc.start_channels()
        wait_ready(kc)
        return kc

    def host_pids(self) -> list[int]:
        """Every host process of this sandbox: ``runsc run`` and its children (sandbox,
        gofer, stubs), plus whatever sits in its cgroup."""
        pids = set(descendants(self.proc.pid)) | set(cgroup_pids(memcg(self.name)))
        return sorted(p for p in pids if Path(f"/proc/{p}").exists())

    def remove(self) -> None:
        self.lab.sandboxes.pop(self.name, None)
        if self.listeners is not None:
            listeners, self.listeners = self.listeners, None
            try:
                self.call(listeners.close(), timeout=10)
            except Exception:
                pass
        self.lab.relay.loop.call_soon_threadsafe(self.session.close)
        subprocess.run(
            self.lab.runsc("kill", "--all", self.name, "KILL"), capture_output=True, timeout=30
        )
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        subprocess.run(
            self.lab.runsc("delete", "--force", self.name), capture_output=True, timeout=30
        )
        for d in cgroup_dirs(self.name):
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.lab.dir / "bundles" / self.name, ignore_errors=True)


def wait_ready(kc: Any, timeout: float = 60) -> None:
    """Send kernel_info_request until a reply comes (not jupyter_client's wait_for_ready,
    which gives up early on a client without a manager whose heartbeat is not beating yet)."""
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        try:
            while True:
                reply = kc.get_shell_msg(timeout=1.0)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return
        except queue.Empty:
            continue
    raise TimeoutError("no kernel_info_reply")


def run_code(kc: Any, code: str, timeout: float = 60) -> str:
    """Execute ``code`` in a kernel; return what it printed (stdout)."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])

    kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out)


# -- reports --------------------------------------------------------------------------------
def process_table(box: Sandbox) -> list[dict[str, Any]]:
    """One row per host process of a sandbox: name, /proc status, smaps by kind."""
    rows = []
    for pid in box.host_pids():
        kinds = smaps_by_kind(pid)
        rows.append({"pid": pid, "comm": comm(pid), "status": status_fields(pid), "smaps": kinds})
    return rows


def summarise_processes(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per process name (stubs grouped), per kind: Rss and Pss in KiB."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        name = row["comm"]
        group = out.setdefault(name, {"count": 0})
        group["count"] += 1
        for kind, fields in row["smaps"].items():
            k = kind.split(":")[0]
            for f in ("Rss", "Pss", "Private_Dirty", "Private_Clean"):
                group[f"{k}.{f}"] = group.get(f"{k}.{f}", 0) + fields[f]
    return out


def usage(box: Sandbox) -> str:
    out = subprocess.run(
        box.lab.runsc("usage", "--full", box.name), capture_output=True, text=True, timeout=30
    )
    return (out.stdout or out.stderr).strip()


INSIDE_STATS = """
import sys, json
def smaps(path):
    tot = {}
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(':') and parts[1].isdigit():
                tot[parts[0][:-1]] = tot.get(parts[0][:-1], 0) + int(parts[1])
    except OSError as e:
        return str(e)
    return {k: tot[k] for k in ('Rss', 'Pss', 'Anonymous', 'Private_Dirty') if k in tot}
print(json.dumps({
    'modules': len(sys.modules),
    'heavy': sorted(m for m in ('numpy', 'matplotlib', 'PIL', 'pandas', 'scipy', 'jedi',
                                'ipywidgets', 'ssl', 'sqlite3', 'pygments')
                    if m in sys.modules),
    'kernel_smaps_kib': smaps('/proc/self/smaps'),
    'agent_smaps_kib': smaps('/proc/1/smaps'),
    'meminfo': open('/proc/meminfo').read().splitlines()[:6],
}))
"""


def kernel_inside_stats(kc: Any) -> dict[str, Any]:
    """What the kernel has imported and its (and the agent's) memory as gVisor reports it."""
    return dict(json.loads(run_code(kc, INSIDE_STATS)))


def mm_groups(pids: list[int]) -> list[list[int]]:
    """Processes grouped by address space (kcmp)."""
    groups: list[list[int]] = []
    for pid in pids:
        for g in groups:
            if same_mm(pid, g[0]):
                g.append(pid)
                break
        else:
            groups.append([pid])
    return groups


# -- commands -------------------------------------------------------------------------------
def cmd_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(
        flags=tuple(args.flag),
        run_args=tuple(args.run_arg),
        kernel_env=dict(args.kernel_env),
        runsc_env=dict(args.runsc_env),
    )
    try:
        box = lab.start_prewarmed()
        kc = box.claim() if args.claim else None
        time.sleep(args.settle)
        rows = process_table(box)
        result: dict[str, Any] = {
            "flags": list(lab.flags),
            "kernel_env": lab.kernel_env,
            "claimed": bool(args.claim),
            "processes": summarise_processes(rows),
            "status": {f"{r['comm']}:{r['pid']}": r["status"] for r in rows},
            "address_spaces": [
                [f"{comm(p)}:{p}" for p in g] for g in mm_groups([r["pid"] for r in rows])
            ],
            "cgroup": cgroup_memory(memcg(box.name)),
            "usage": usage(box),
        }
        if kc is not None:
            result["inside"] = kernel_inside_stats(kc)
            kc.stop_channels()
        return result
    finally:
        lab.remove_all()


def _per_kernel(values: list[int], scale: float) -> float:
    return round(statistics.mean(values) / scale, 1) if values else 0.0


def cgroup_summary(names: list[Path]) -> dict[str, float]:
    """Mean per cgroup, MiB: usage (includes kmem), rss (anon), shmem, kmem."""
    cg = [cgroup_memory(n) for n in names]
    return {
        "cgroup_usage_mib": _per_kernel([c.get("usage", 0) for c in cg], MiB),
        "cgroup_rss_mib": _per_kernel([c.get("rss", 0) for c in cg], MiB),
        "cgroup_shmem_mib": _per_kernel([c.get("shmem", 0) for c in cg], MiB),
        "cgroup_file_mib": _per_kernel([c.get("cache", 0) - c.get("shmem", 0) for c in cg], MiB),
        "cgroup_kmem_mib": _per_kernel([kmem_bytes(n) for n in names], MiB),
    }


def bracket(
    n: int, up: Any, measure: Any, down: Any, settle: float, idle_cpu: Any = lambda: 0.0
) -> dict[str, Any]:
    """Host memory in use around starting ``n`` kernels (``up``) and removing them
    (``down``): both deltas per kernel, with ``measure()``'s figures taken in between."""
    before, m0, d0 = settle_in_use(), meminfo(), daemons_rss_kib()
    t0 = time.monotonic()
    up()
    started = time.monotonic() - t0
    c0, t1 = idle_cpu(), time.monotonic()
    time.sleep(settle)
    idle = (idle_cpu() - c0) / (time.monotonic() - t1)
    loaded, m1, d1 = settle_in_use(), meminfo(), daemons_rss_kib()
    figures = measure()
    down()
    time.sleep(settle)
    after = settle_in_use()
    return {
        "n": n,
        "start_seconds_total": round(started, 1),
        "in_use_up_mib": round((loaded - before) / 1024 / n, 1),
        "in_use_down_mib": round((loaded - after) / 1024 / n, 1),
        "meminfo_up_mib": {k: round((m1[k] - m0[k]) / 1024 / n, 1) for k in MEMINFO_KEYS},
        "daemons_rss_up_mib": round((d1 - d0) / 1024 / n, 2),
        "idle_cpu_percent_per_kernel": round(100 * idle / n, 2),
        **figures,
        "load": [round(x, 1) for x in os.getloadavg()],
    }


def answering(clients: list[Any]) -> dict[str, Any]:
    """Ask every claimed kernel for kernel_info once more, one after the other: how many
    answer, and how long the round took."""
    if not clients:
        return {}
    t0 = time.monotonic()
    ok = 0
    for kc in clients:
        try:
            wait_ready(kc, timeout=30)
            ok += 1
        except TimeoutError:
            pass
    return {
        "answering": f"{ok}/{len(clients)}",
        "answer_round_seconds": round(time.monotonic() - t0, 2),
    }


def in_parallel(n: int, parallel: bool, one: Any) -> None:
    """Call ``one()`` n times, one after the other or all at once (threads)."""
    if not parallel:
        for _ in range(n):
            one()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n) as pool:
        for f in [pool.submit(one) for _ in range(n)]:
            f.result()


def cmd_memory(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(
        flags=tuple(args.flag),
        run_args=tuple(args.run_arg),
        kernel_env=dict(args.kernel_env),
        runsc_env=dict(args.runsc_env),
    )
    clients: list[Any] = []
    boxes: list[Sandbox] = []

    ready: list[float] = []
    cpu: list[float] = []
    t_start = time.monotonic()

    def one() -> None:
        if args.claim or args.cold:
            box, kc = lab.start_kernel(cold=args.cold)
            clients.append(kc)
        else:
            box = lab.start_prewarmed()
        ready.append(time.monotonic() - t_start)
        cpu.append(cpu_seconds(box))
        boxes.append(box)

    def up() -> None:
        nonlocal t_start
        t_start = time.monotonic()
        in_parallel(args.n, args.parallel, one)

    def measure() -> dict[str, Any]:
        names = [memcg(b.name) for b in boxes]
        every = [b.host_pids() for b in boxes]
        answered = answering(clients)
        outside = [
            [p for p in pids if p not in cgroup_pids(memcg(b.name))]
            for b, pids in zip(boxes, every, strict=True)
        ]
        return {
            **answered,
            "ready_seconds_median": round(statistics.median(ready), 2),
            "ready_seconds_last": round(max(ready), 2),
            "cpu_seconds_to_ready_median": round(statistics.median(cpu), 2),
            **cgroup_summary(names),
            "pss_summed_mib": _per_kernel(
                [sum(f["Pss"] for p in pids for f in smaps_by_kind(p).values()) for pids in every],
                1024,
            ),
            "pss_distinct_mm_mib": _per_kernel([pss_kib(pids) for pids in every], 1024),
            "outside_cgroup_pss_mib": _per_kernel([pss_kib(pids) for pids in outside], 1024),
        }

    def down() -> None:
        for kc in clients:
            kc.stop_channels()
        lab.remove_all()

    try:
        result = bracket(
            args.n, up, measure, down, args.settle, lambda: sum(cpu_seconds(b) for b in boxes)
        )
    finally:
        down()
    return {
        "flags": list(lab.flags),
        "kernel_env": lab.kernel_env,
        "runsc_env": lab.runsc_env,
        "kernel": "cold" if args.cold else "claimed" if args.claim else "pooled",
        **result,
    }


def cmd_local(args: argparse.Namespace) -> dict[str, Any]:
    """N local ipykernels (the host's Python, as benchmarks/run.py's "local" kernel), each
    in a memory cgroup of its own so that its figures compare with a sandbox's."""
    from jupyter_client.blocking.client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    work = Path(tempfile.mkdtemp(prefix="sk-gvisor-lab-local-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def up() -> None:
        for i in range(args.n):
            name = f"local-{os.getpid()}-{i}"
            d = Path("/sys/fs/cgroup/memory") / (CGROUP_PREFIX + name)
            d.mkdir()
            fname, info = write_connection_file(str(work / f"k{i}.json"))
            env = {**os.environ, **dict(args.kernel_env)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "ipykernel_launcher", "-f", fname],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                preexec_fn=functools.partial(join_cgroup, d),
            )
            procs.append((name, proc))
            kc = BlockingKernelClient()
            kc.load_connection_info(info)
            kc.start_channels()
            wait_ready(kc)
            kc.stop_channels()

    def measure() -> dict[str, Any]:
        return {
            **cgroup_summary([memcg(n) for n, _ in procs]),
            "pss_distinct_mm_mib": _per_kernel(
                [pss_kib(descendants(p.pid)) for _, p in procs], 1024
            ),
        }

    def down() -> None:
        while procs:
            name, proc = procs.pop()
            proc.kill()
            proc.wait()
            for _ in range(20):
                try:
                    (Path("/sys/fs/cgroup/memory") / (CGROUP_PREFIX + name)).rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)

    try:
        result = bracket(
            args.n, up, measure, down, args.settle, lambda: sum(proc_cpu(p.pid) for _, p in procs)
        )
        return {"kernel_env": dict(args.kernel_env), **result}
    finally:
        down()


PROBE = """
import ctypes, json, os, random, secrets, sys, tempfile, time, uuid
k = get_ipython().kernel
out = {
    'random.random': random.random(),
    'os.urandom': os.urandom(8).hex(),
    'secrets.token_hex': secrets.token_hex(8),
    'uuid.uuid4': str(uuid.uuid4()),
    'hash(str) (PYTHONHASHSEED)': hash('sandbox-kernel'),
    'tempfile name': os.path.basename(tempfile.mktemp()),
    'kernel session id': k.session.session,
    'kernel ident': k.ident,
    'kernel HMAC key (sha256 prefix)': __import__('hashlib').sha256(k.session.key).hexdigest()[:12],
    'connection file key (sha256 prefix)': __import__('hashlib').sha256(
        json.load(open('/tmp/.sandbox-kernel/kernel.json'))['key'].encode()).hexdigest()[:12],
    'boot_id': open('/proc/sys/kernel/random/boot_id').read().strip(),
    'kernel pid': os.getpid(),
    'libc printf address (ASLR)': hex(ctypes.cast(ctypes.CDLL(None).printf, ctypes.c_void_p).value),
    'heap object address': hex(id(object())),
    'ssl imported': 'ssl' in sys.modules,
    'ssl.RAND_bytes': __import__('ssl').RAND_bytes(8).hex(),
    'numpy imported before': 'numpy' in sys.modules,
    'time.monotonic': round(time.monotonic(), 1),
    'wall clock': time.time(),
}
print(json.dumps(out))
"""


def probe(kc: Any) -> dict[str, Any]:
    """Random state, ids and keys of a claimed kernel, plus the message ids it signs."""
    reply_headers: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            reply_headers.append({"text": msg["content"]["text"], "header": msg["header"]})

    kc.execute_interactive(PROBE, output_hook=hook, timeout=60)
    text = "".join(h["text"] for h in reply_headers)
    found = dict(json.loads(text))
    header = reply_headers[0]["header"] if reply_headers else {}
    found["iopub msg_id"] = header.get("msg_id")
    found["iopub header session"] = header.get("session")
    return found


async def _ping(session: AgentSession) -> None:
    """A round trip through the agent (an empty file transfer answers with a reply)."""
    session.send_control({"op": "put_start", "home": "/tmp"})
    assert session.requests is not None
    reply = await session.requests.ask({"op": "put_done"}, timeout=60)
    if "req" not in reply:
        raise RuntimeError(f"unexpected reply {reply}")


def cmd_snapshot(args: argparse.Namespace) -> dict[str, Any]:
    """Checkpoint one pre-initialised sandbox, restore it N times (timed), measure the
    restored sandboxes' memory, then claim two copies and compare their state."""
    lab = Lab(
        flags=tuple(args.flag),
        kernel_env=dict(args.kernel_env),
        runsc_env=dict(args.runsc_env),
        reseed=args.reseed,
    )
    image = lab.dir / "image"
    ck_args = (*(("--compression=none",) if args.uncompressed else ()), *args.checkpoint_flag)
    boxes: list[Sandbox] = []
    clients: list[Any] = []
    timings: dict[str, list[float]] = {
        "agent answers": [],
        "kernel_info after claim": [],
        "ready since the first request": [],
    }
    try:
        t0 = time.monotonic()
        source = lab.start_prewarmed()
        prewarm_seconds = time.monotonic() - t0
        checkpoint_seconds = lab.checkpoint(source, image, *ck_args)
        source.remove()
        image_bytes = sum(f.stat().st_size for f in image.iterdir())

        t_start = time.monotonic()
        cpu: list[float] = []

        def one() -> None:
            t = time.monotonic()
            box = lab.restore(image, None, *args.restore_flag)
            boxes.append(box)
            box.call(_ping(box.session), timeout=120)
            timings["agent answers"].append(time.monotonic() - t)
            if args.claim:
                t = time.monotonic()
                clients.append(box.claim())
                timings["kernel_info after claim"].append(time.monotonic() - t)
            timings["ready since the first request"].append(time.monotonic() - t_start)
            cpu.append(cpu_seconds(box))

        def up() -> None:
            nonlocal t_start
            t_start = time.monotonic()
            in_parallel(args.n, args.parallel, one)

        def measure() -> dict[str, Any]:
            names = [memcg(b.name) for b in boxes]
            every = [b.host_pids() for b in boxes]
            return {
                **answering(clients),
                "cpu_seconds_to_ready_median": round(statistics.median(cpu), 2),
                **cgroup_summary(names),
                "pss_distinct_mm_mib": _per_kernel([pss_kib(pids) for pids in every], 1024),
            }

        def compare() -> dict[str, Any]:
            kcs = clients[:2] or [b.claim() for b in boxes[:2]]
            clients.extend(kcs[len(clients) :])
            a, b = probe(kcs[0]), probe(kcs[1])
            for x in (a, b):  # off by more than a second from the host's clock?
                x["wall clock"] = abs(x["wall clock"] - time.time()) < 1.0
            return {k: {"copy 1": a[k], "copy 2": b.get(k), "same": a[k] == b.get(k)} for k in a}

        def down() -> None:
            for kc in clients:
                kc.stop_channels()
            clients.clear()
            for box in boxes:
                box.remove()
            boxes.clear()

        compared: dict[str, Any] = {}

        def measure_and_compare() -> dict[str, Any]:
            figures = measure()
            if args.n >= 2:
                compared.update(compare())
            return figures

        result = bracket(
            args.n,
            up,
            measure_and_compare,
            down,
            args.settle,
            lambda: sum(cpu_seconds(b) for b in boxes),
        )
        return {
            "flags": list(lab.flags),
            "reseed_on_claim": lab.reseed,
            "checkpoint_args": list(ck_args),
            "prewarm_seconds": round(prewarm_seconds, 2),
            "checkpoint_seconds": round(checkpoint_seconds, 2),
            "image_mib": round(image_bytes / MiB, 1),
            "restore_seconds": {
                k: {"median": round(statistics.median(v), 2), "max": round(max(v), 2)}
                for k, v in timings.items()
                if v
            },
            **result,
            "two_copies": compared,
        }
    finally:
        for kc in clients:
            kc.stop_channels()
        lab.remove_all()


def print_throughput(kc: Any, mib: int = 50) -> float:
    """MiB/s of a ``mib`` MiB print reaching the client (as benchmarks/run.py), after what
    earlier requests left on IOPub."""
    drain(kc)
    return kernel_timing.print_throughput(kc, mib)[0]


TIMINGS_INSIDE = """
import json, os, time
t = time.perf_counter()
for _ in range(20000):
    os.getppid()
syscall_us = (time.perf_counter() - t) / 20000 * 1e6
t = time.perf_counter()
import numpy
numpy_s = time.perf_counter() - t
t = time.perf_counter()
import matplotlib.pyplot
mpl_s = time.perf_counter() - t
t = time.perf_counter()
x = [list(range(30000)) for _ in range(10)]
alloc_ms = (time.perf_counter() - t) * 1000
del x
print(json.dumps({"syscall_us": round(syscall_us, 2), "import_numpy_s": round(numpy_s, 3),
                  "import_pyplot_s": round(mpl_s, 3), "ten_30k_lists_ms": round(alloc_ms, 1)}))
"""


def cmd_cells(args: argparse.Namespace) -> dict[str, Any]:
    """One kernel with these flags: time to a pre-initialised kernel, claim to
    kernel_info, trivial-cell round trips, a 50 MiB print, idle CPU."""
    lab = Lab(
        flags=tuple(args.flag),
        run_args=tuple(args.run_arg),
        kernel_env=dict(args.kernel_env),
        runsc_env=dict(args.runsc_env),
        kernel_args=tuple(args.kernel_arg),
    )
    try:
        t0 = time.monotonic()
        box = lab.start_prewarmed()
        prewarm = time.monotonic() - t0
        cpu_prewarm = cpu_seconds(box)
        t0 = time.monotonic()
        kc = box.claim()
        claim = time.monotonic() - t0
        try:
            inside = json.loads(run_code(kc, TIMINGS_INSIDE))
            rtts = cell_rtts(kc, args.cells)
            mbps = print_throughput(kc)
            time.sleep(2)
            c0 = cpu_seconds(box)
            time.sleep(args.settle)
            idle = (cpu_seconds(box) - c0) / args.settle
        finally:
            kc.stop_channels()
        return {
            "flags": list(lab.flags),
            "kernel_env": lab.kernel_env,
            "kernel_args": list(lab.kernel_args),
            "prewarm_seconds": round(prewarm, 2),
            "prewarm_cpu_seconds": round(cpu_prewarm, 2),
            "claim_to_kernel_info_seconds": round(claim, 3),
            "cell_ms_p50": round(1000 * statistics.median(rtts), 2),
            "cell_ms_p99": round(1000 * sorted(rtts)[int(0.99 * (len(rtts) - 1))], 2),
            "print_mib_per_s": round(mbps, 1),
            **inside,
            "idle_cpu_percent": round(100 * idle, 2),
            "cgroup": {k: round(v / MiB, 1) for k, v in cgroup_memory(memcg(box.name)).items()},
            "load": [round(x, 1) for x in os.getloadavg()],
        }
    finally:
        lab.remove_all()


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Lab only (``--profile`` loosens the sandbox's seccomp filter): a CPU profile of the
    sentry while a claimed kernel runs trivial cells for ``--seconds``, or prints
    (``--workload print``), read with ``go tool pprof -top``."""
    lab = Lab(flags=(*args.flag, "--profile"), kernel_env=dict(args.kernel_env))
    out = Path(args.out or tempfile.mkdtemp(prefix="sk-gvisor-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    prof = out / f"sentry-{args.workload}.pprof"
    try:
        box = lab.start_prewarmed()
        kc = box.claim()
        try:
            cell_rtts(kc, 5)
            debug = subprocess.Popen(
                lab.runsc(
                    "debug", f"--profile-cpu={prof}", f"--duration={args.seconds}s", box.name
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + args.seconds
            cells = 0
            while time.monotonic() < deadline:
                if args.workload == "print":
                    code = "for _ in range(100):\n    print('x' * 80, flush=True)"
                    kc.execute_interactive(code, output_hook=lambda _m: None, timeout=60)
                else:
                    kc.execute("pass")
                    kc.get_shell_msg(timeout=30)
                cells += 1
            _, err = debug.communicate(timeout=args.seconds + 60)
        finally:
            kc.stop_channels()
    finally:
        lab.remove_all()
    top = subprocess.run(
        ["go", "tool", "pprof", "-top", "-nodecount=45", find_runsc(), str(prof)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    (out / f"sentry-{args.workload}.top.txt").write_text(top.stdout)
    return {
        "profile": str(prof),
        "cells": cells,
        "top": top.stdout.splitlines()[:60],
        "debug_stderr": err.decode()[-500:],
    }


def cmd_relay_profile(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile of the host relay's thread (where every relay runs) while a runc-tier kernel
    (Docker, no gVisor: the relay's own share) prints 50 MiB; plus the MiB/s."""
    import cProfile
    import io
    import pstats

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.kernelspec import build_kernelspec

    specs = Path(tempfile.mkdtemp(prefix="sk-gvisor-lab-specs-"))
    (specs / "lab").mkdir()
    config = {"image": DEFAULT_IMAGE, "pool_size": 0, "backend": "docker-runc"}
    (specs / "lab" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    km = KernelManager(
        kernel_name="lab", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)])
    )
    profiler = cProfile.Profile()
    relay = RelayThread.get()
    try:
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        wait_ready(kc)
        try:
            provisioner: Any = km.provisioner
            cid = provisioner.sandbox_id
            _, pids = docker_pids(cid)

            def who(pid: int) -> str:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    return "gone"
                if b"-I" in cmd:
                    return "agent (in the sandbox)"
                if b"ipykernel_launcher" in cmd or b"-c" in cmd:
                    return "kernel (in the sandbox)"
                return comm(pid)

            def cpus() -> dict[str, float]:
                found: dict[str, float] = {}
                for name in ("dockerd", "containerd"):
                    for text in subprocess.run(
                        ["pgrep", "-x", name], capture_output=True, text=True
                    ).stdout.split():
                        found[name] = found.get(name, 0.0) + proc_cpu(int(text))
                for pid in pids:
                    found[who(pid)] = found.get(who(pid), 0.0) + proc_cpu(pid)
                found["this process (client + relay)"] = proc_cpu(os.getpid())
                return found

            c0, t0 = cpus(), time.monotonic()
            plain = print_throughput(kc)
            wall = time.monotonic() - t0
            c1 = cpus()
            cpu_split = {k: round(c1[k] - c0.get(k, 0.0), 2) for k in c1}
            relay.loop.call_soon_threadsafe(profiler.enable)
            profiled = print_throughput(kc)
            relay.submit(asyncio_noop(profiler.disable)).result(timeout=30)
        finally:
            kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
        shutil.rmtree(specs, ignore_errors=True)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    return {
        "print_mib_per_s": round(plain, 1),
        "print_wall_seconds": round(wall, 2),
        "cpu_seconds_during_print": cpu_split,
        "profiled_mib_per_s": round(profiled, 1),
        "top_tottime": text.getvalue().splitlines(),
    }


async def asyncio_noop(call: Any) -> None:
    call()


def attack_params(lab: Lab, tag: str) -> dict[str, dict[str, Any]]:
    """Host knowledge for the attacks that need it (markers planted by the caller)."""
    import socket

    markers = [str(d / f"sk-lab-marker-{tag}") for d in marker_dirs(lab)]
    known = [
        REPO / "pyproject.toml",
        Path("/var/lib/docker"),
        Path("/etc/docker"),
        Path("/var/run/docker.sock"),
        Path(sys.executable),
        lab.rootfs.parent,
        lab.dir / "state",
    ]
    me = os.getpid()
    return {
        "fs-host-markers": {"paths": markers + [str(p) for p in known if p.exists()]},
        "fs-tmpfs-caps": {"tmp_bytes": lab.policy.tmp_bytes, "home_bytes": lab.policy.home_bytes},
        "info-hostname": {"host_hostname": socket.gethostname()},
        "info-kernel-release": {"host_release": os.uname().release},
        "info-host-identifiers": {
            "host_boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "host_machine_id": Path("/etc/machine-id").read_text().strip()
            if Path("/etc/machine-id").exists()
            else "",
            "host_cmdline": Path("/proc/cmdline").read_text().strip(),
        },
        "info-host-pids": {"pids": [[me, "python"], [1, comm(1)]]},
    }


def marker_dirs(lab: Lab) -> list[Path]:
    dirs = [
        Path("/tmp"),
        Path("/var/tmp"),
        Path("/dev/shm"),
        Path.home(),
        REPO,
        lab.dir,
        lab.dir / "bundles",
    ]
    return [d for d in dirs if d.is_dir()]


def cmd_isolation(args: argparse.Namespace) -> dict[str, Any]:
    """Every attack of the catalogue that needs no test host, run in a claimed kernel of a
    sandbox started with these flags (as tests/security/test_attacks.py does it, without
    the host-side controls): which ones are blocked."""
    from sandbox_kernel.security import ATTACKS, render

    lab = Lab(flags=tuple(args.flag), run_args=tuple(args.run_arg))
    tag = secrets.token_hex(6)
    planted = [d / f"sk-lab-marker-{tag}" for d in marker_dirs(lab)]
    verdicts: dict[str, Any] = {}
    try:
        for marker in planted:
            marker.write_text("host secret")
        params = attack_params(lab, tag)
        box = lab.start_prewarmed()
        kc = box.claim()
        try:
            # The root file system is mounted read-only (the catalogue's fs-write-outside-tmpfs
            # tries the writes; this names the mount flag).
            verdicts["root mounted read-only"] = run_code(
                kc, "import os\nprint(bool(os.statvfs('/').f_flag & os.ST_RDONLY))"
            ).strip()
            for attack in ATTACKS:
                if attack.needs and attack.id not in params:
                    continue
                code = render(attack, **params.get(attack.id, {}))
                out = run_code(kc, code, timeout=120).strip().splitlines()
                try:
                    verdicts[attack.id] = json.loads(out[-1])["blocked"]
                except (IndexError, ValueError, KeyError):
                    verdicts[attack.id] = "no verdict: " + " ".join(out)[-300:]
        finally:
            kc.stop_channels()
    finally:
        for marker in planted:
            marker.unlink(missing_ok=True)
        lab.remove_all()
    not_blocked = [
        k for k, v in verdicts.items() if v is not True and k != "root mounted read-only"
    ]
    return {"flags": list(lab.flags), "not_blocked": not_blocked, "verdicts": verdicts}


def docker_pids(cid: str) -> tuple[Path, list[int]]:
    """A Docker container's memory cgroup and its host processes: those in the cgroup
    (sentry, gofer, stubs) plus its containerd shim."""
    d = Path("/sys/fs/cgroup/memory/docker") / cid
    shim = subprocess.run(
        ["pgrep", "-f", f"containerd-shim.*{cid}"], capture_output=True, text=True
    ).stdout
    return d, sorted(set(cgroup_pids(d)) | {int(p) for p in shim.split()})


def cmd_docker(args: argparse.Namespace) -> dict[str, Any]:
    """N cold gVisor kernels through the provisioner and Docker's runsc runtime (today's
    path; the benchmark's "sandbox runsc cold"), pool disabled."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.kernelspec import build_kernelspec

    specs = Path(tempfile.mkdtemp(prefix="sk-gvisor-lab-specs-"))
    (specs / "lab").mkdir()
    config = {
        "image": DEFAULT_IMAGE,
        "pool_size": 0,
        **({"runtime": "runc", "backend": "docker-runc"} if args.runc else {}),
    }
    (specs / "lab" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    ksm = KernelSpecManager(kernel_dirs=[str(specs)])
    kms: list[Any] = []

    def up() -> None:
        for _ in range(args.n):
            km = KernelManager(kernel_name="lab", kernel_spec_manager=ksm)
            km.start_kernel()
            kms.append(km)
            kc = km.client()
            kc.start_channels()
            wait_ready(kc)
            kc.stop_channels()

    def measure() -> dict[str, Any]:
        found = [docker_pids(km.provisioner.sandbox_id) for km in kms]
        outside = [[p for p in pids if p not in cgroup_pids(d)] for d, pids in found]
        return {
            **cgroup_summary([d for d, _ in found]),
            "pss_summed_mib": _per_kernel(
                [
                    sum(f["Pss"] for p in pids for f in smaps_by_kind(p).values())
                    for _, pids in found
                ],
                1024,
            ),
            "pss_distinct_mm_mib": _per_kernel([pss_kib(pids) for _, pids in found], 1024),
            "outside_cgroup_pss_mib": _per_kernel([pss_kib(pids) for pids in outside], 1024),
        }

    def down() -> None:
        while kms:
            kms.pop().shutdown_kernel(now=True)
        shutil.rmtree(specs, ignore_errors=True)

    try:

        def cpu() -> float:
            total = 0.0
            for km in kms:
                cid = km.provisioner.sandbox_id
                total += cgroup_cpu(Path("/sys/fs/cgroup/cpuacct/docker") / cid)
                total += sum(proc_cpu(p) for p in docker_pids(cid)[1])
            return total

        result = bracket(args.n, up, measure, down, args.settle, cpu)
        return {"runtime": "runc" if args.runc else "runsc", **result}
    finally:
        down()


def pair(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=[
            "breakdown",
            "memory",
            "local",
            "docker",
            "snapshot",
            "cells",
            "isolation",
            "profile",
            "relay-profile",
        ],
    )
    parser.add_argument("--cells", type=int, default=300, help="cells: trivial cells timed")
    parser.add_argument("--run-arg", action="append", default=[], help="e.g. --detach")
    parser.add_argument("--parallel", action="store_true", help="start the N at once")
    parser.add_argument("--checkpoint-flag", action="append", default=[])
    parser.add_argument("--restore-flag", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=20, help="profile: how long")
    parser.add_argument("--workload", choices=["cells", "print"], default="cells")
    parser.add_argument("--out", help="profile: folder for the profile files")
    parser.add_argument("--kernel-arg", action="append", default=[], help="kernel argument")
    parser.add_argument("--reseed", action="store_true", help="renew random state on claim")
    parser.add_argument("--uncompressed", action="store_true", help="snapshot: no compression")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--flag", action="append", default=[], help="extra runsc flag")
    parser.add_argument(
        "--kernel-env", action="append", default=[], type=pair, help="NAME=VALUE for the kernel"
    )
    parser.add_argument(
        "--runsc-env", action="append", default=[], type=pair, help="NAME=VALUE for runsc"
    )
    parser.add_argument("--claim", action="store_true", help="hand each kernel a key")
    parser.add_argument("--cold", action="store_true", help="start the kernel at claim")
    parser.add_argument("--runc", action="store_true", help="docker: runc instead of runsc")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import resource

    # Each claimed kernel holds ~17 descriptors here (listeners, client sockets, relay
    # streams, pipes): 100 of them need more than the usual 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    commands = {
        "breakdown": cmd_breakdown,
        "memory": cmd_memory,
        "local": cmd_local,
        "docker": cmd_docker,
        "snapshot": cmd_snapshot,
        "cells": cmd_cells,
        "isolation": cmd_isolation,
        "profile": cmd_profile,
        "relay-profile": cmd_relay_profile,
    }
    result = commands[args.command](args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
