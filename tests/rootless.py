"""Jupyter as a real ordinary user, for the rootless runsc backend: a system user created for
the test (removed after), the world-readable venv of scripts/shared-venv.sh with this
checkout's ``sandbox_kernel`` first on its path, and kernels started by a process running
as that user and driven from the test (root) over their 127.0.0.1 ports.

Why a copy of the package instead of reinstalling into /opt/sandbox-kernel/venv: other
test runs on this host may use that venv at the same time; the copy (mode a+rX, under
/tmp) is this run's own. The venv supplies jupyter_client and the entry point.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

from tests.helpers import REPO, RUNSC_RUNTIME, Kernel

SHARED_VENV = Path("/opt/sandbox-kernel/venv")

# Runs as the user: start one kernel, print its connection info, serve until stdin closes
# ("alive" on stdin prints whether the kernel lives), then shut it down.
USER_SERVER = r"""
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[2], kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
try:
    km.start_kernel()
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    raise SystemExit(0)
info = dict(km.get_connection_info())
info["key"] = info["key"].decode()
print(json.dumps({"connection": info, "sandbox": km.provisioner.sandbox_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "alive":
        print(json.dumps({"alive": km.is_alive()}), flush=True)
km.shutdown_kernel(now=False)
print(json.dumps({"stopped": km.provisioner.sandbox_id is None}), flush=True)
"""


@dataclass
class HostUser:
    """A system user of this host, made for the test, with a private home under /tmp."""

    name: str
    uid: int
    gid: int
    home: Path
    python: str = str(SHARED_VENV / "bin" / "python")
    pythonpath: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The user's environment: the test's own (so variables a test plants reach the
        user's Jupyter process) minus anything naming root's folders, plus the user's."""
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("JUPYTER", "XDG_", "VIRTUAL_ENV", "PYTHON", "IPYTHON"))
        }  # fmt: skip
        env.update(
            PATH="/usr/local/bin:/usr/bin:/bin",
            HOME=str(self.home),
            USER=self.name,
            LOGNAME=self.name,
            PYTHONPATH=self.pythonpath,
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            JUPYTER_DATA_DIR=str(self.home / ".local" / "share" / "jupyter"),
            JUPYTER_CONFIG_DIR=str(self.home / ".jupyter"),
            **self.extra_env,
            **(extra or {}),
        )
        return env

    def run(
        self, *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, user=self.uid, group=self.gid, extra_groups=[], cwd=self.home,
            env=self.env(env), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``sandbox-kernel ARGS`` as this user."""
        return self.run(self.python, "-m", "sandbox_kernel.cli.main", *args, timeout=timeout)

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            args, user=self.uid, group=self.gid, extra_groups=[], cwd=self.home,
            env=self.env(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip

    def processes(self) -> list[int]:
        """Every live process of this host running as the user (zombies waiting for init to
        reap them, e.g. runsc's short-lived helpers, do not count)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    status = dict(
                        line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                    )
                except (OSError, ValueError):
                    continue
                if int(status["Uid"].split()[1]) == self.uid and status["State"].split()[0] != "Z":
                    found.append(int(entry.name))
        return found


def create_user(prefix: str = "skrl") -> HostUser:
    name = f"{prefix}-{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"{name}-home-"))
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
         "--user-group", name],
        check=True, capture_output=True,
    )  # fmt: skip
    pw = pwd.getpwnam(name)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    home.chmod(0o700)
    return HostUser(name, pw.pw_uid, pw.pw_gid, home)


def remove_user(user: HostUser) -> list[int]:
    """Remove the user and their files; return the pids of processes that were still
    running as the user (the caller asserts there were none), which are killed first."""
    leftover = user.processes()
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["userdel", user.name], check=False, capture_output=True)
    shutil.rmtree(user.home, ignore_errors=True)
    shutil.rmtree(f"/tmp/sandbox-kernel-runsc-{user.uid}", ignore_errors=True)
    return leftover


def shared_python(root: Path) -> str:
    """A world-readable copy of this checkout's package under ``root`` for users' processes
    (their PYTHONPATH); the shared venv is made by scripts/shared-venv.sh if missing."""
    if not (SHARED_VENV / "bin" / "python").exists():
        subprocess.run(["bash", str(REPO / "scripts" / "shared-venv.sh")], check=True)
    copy = root / "pythonpath"
    shutil.copytree(REPO / "sandbox_kernel", copy / "sandbox_kernel",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(copy)


# Kernelspecs the user's servers start: "rl" as `install --backend runsc` writes it; "rl-small"
# with small caps for the limit tests; "rl-accepted" accepts the limits rootless runsc cannot
# enforce without a delegated cgroup.
UNENFORCED_WITHOUT_CGROUPS = ["cpu_limit", "memory_limit", "pids_limit"]
ROOTLESS_SPECS: dict[str, dict[str, Any]] = {
    "rl": {"backend": "runsc", "pool_size": 0, **RUNSC_RUNTIME},
    "rl-small": {"backend": "runsc", "pool_size": 0, "memory_limit": "1g", "cpu_limit": 0.5,
                 "nproc_limit": 16, "pids_limit": 1000},
    "rl-accepted": {"backend": "runsc", "pool_size": 0,
                    "accept_unenforced": UNENFORCED_WITHOUT_CGROUPS},
    # A warm pool with pool_snapshots at its default (on): rootless, it starts fresh sandboxes.
    "rl-pool": {"backend": "runsc", "pool_size": 1,
                "accept_unenforced": UNENFORCED_WITHOUT_CGROUPS},
}  # fmt: skip


@dataclass
class Rootless:
    """A test user with the shared venv and kernelspecs it can read (see tests/conftest.py)."""

    user: HostUser
    kernels: Path
    root: Path

    def kernel(self, name: str = "rl", **env: str) -> UserKernel:
        return UserKernel(self.user, self.kernels, name, **env)

    def state(self) -> Path:
        """The user's runsc state folder (no XDG_RUNTIME_DIR in their environment)."""
        return Path(f"/tmp/sandbox-kernel-runsc-{self.user.uid}")

    def leftovers(self) -> list[str]:
        """Anything of the user's sandboxes still on the host: runsc state, bundles,
        per-sandbox cgroups under the user's delegation. Not state/null-netns: a current
        runsc's one empty network namespace for every gofer of that state folder (created
        once, reused; runsc/specutils/namespace.go), nothing of a sandbox."""
        found = [
            str(p)
            for d in ("state", "bundles")
            for p in (self.state() / d).glob("*")
            if p.name != "null-netns"
        ]
        found += [str(p) for p in Path("/sys/fs/cgroup").glob(
            f"*/sandbox-kernel-users/{self.user.name}/*/")]  # fmt: skip
        return found


class UserKernel(Kernel):
    """A kernel started by a process running as ``user`` (the Jupyter side of rootless
    runsc), driven from here through its host ports with its key."""

    def __init__(self, user: HostUser, kernel_dirs: Path, name: str, **env: str) -> None:
        self.user = user
        self.server = user.popen(user.python, "-c", USER_SERVER, str(kernel_dirs), name, env=env)
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        reply: dict[str, Any] = json.loads(line) if line else {"error": "no answer"}
        if "error" in reply:
            self.server.wait(timeout=60)
            raise RuntimeError(reply["error"])
        self.sandbox: str = reply["sandbox"]
        kc = BlockingKernelClient()
        kc.load_connection_info(reply["connection"])
        kc.start_channels()
        super().__init__(None, kc)  # type: ignore[arg-type]
        try:
            self._wait_for_ready(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _wait_for_ready(self, timeout: float) -> None:
        """A kernel_info reply (the client's own wait_for_ready would judge liveness by its
        heartbeat alone, which may not beat yet: its KernelManager is in the user's process)."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.kc.kernel_info()
            try:
                while True:
                    reply = self.kc.get_shell_msg(timeout=1)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        return
            except queue.Empty:
                assert time.monotonic() < deadline, "the user's kernel never answered"

    @property
    def sandbox_id(self) -> str | None:
        return self.sandbox

    def alive(self) -> bool:
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write("alive\n")
        self.server.stdin.flush()
        return bool(json.loads(self.server.stdout.readline())["alive"])

    def stop(self) -> None:
        self.kc.stop_channels()
        if self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


def write_kernelspecs(root: Path, specs: Mapping[str, dict[str, Any]]) -> Path:
    """Kernelspec folders the user can read."""
    from sandbox_kernel.kernelspec import build_kernelspec

    root.mkdir(mode=0o755, exist_ok=True)
    root.chmod(0o755)
    for name, config in specs.items():
        (root / name).mkdir(mode=0o755)
        (root / name / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
        (root / name / "kernel.json").chmod(0o644)
    return root
