"""A backend for tests that isolates nothing: the agent runs as a plain host process.

Never registered in production: a test registers it for itself with one registry line
(``register``: ``BACKENDS["local-test"] = "tests.fakes.local_backend:LocalBackend"``,
monkeypatched, so it is gone after the test). Everything else is real: the provisioner,
jupyter_client, the relay, the session, the warm pool, the exchange, the agent (sent over
the pipe by the real bootstrap) and ipykernel. So the lifecycle (start, restart, warm
claim, timeouts, a sandbox that dies, interrupt, teardown, copy-in and export, max_kernels)
is tested in seconds, without Docker, in the unit tier.

Each sandbox is ``local_sandbox.py`` (a host process, modelled on ``backends/pipe.py``:
spawned with pipes as its stdin and stdout, handed to ``session.attach_pipes``), which
runs the bootstrap command and gives the sandbox what its namespaces would: a folder of
its own for /tmp and the home folder (under ``root``), and its own kernel ports. Why
ports are remapped there rather than the kernels run one at a time: the warm pool starts
a second kernel as soon as one is claimed (a pooled kernel binds its ports before it has
an owner), a server runs several kernels at once, and test runs of other checkouts on the
same machine would take the same fixed ports. A network namespace per sandbox would need
root, or unprivileged user namespaces, which some hosts disable (Ubuntu 24.04's AppArmor
default); remapping works for any user anywhere.

The agent and the kernel share one uid, as in the host-kernel backends: the caller's, or,
when the tests run as root, the policy's uid in a user namespace (see local_sandbox.py).
The host's own checks (``boot.check_hello``, ``check_kernel``) run unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sandbox_kernel.backends import registry
from sandbox_kernel.backends.base import Preflight, SandboxBackend
from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.inside.protocol import INSIDE_PORTS
from sandbox_kernel.policy import SandboxPolicy
from sandbox_kernel.relay.session import AgentSession
from sandbox_kernel.relay.thread import RelayThread

NAME = "local-test"
SHIM = Path(__file__).with_name("local_sandbox.py")
# Every process of a local sandbox has this in its environment (the shim adds it to the
# kernel's, as it adds the sandbox's TMPDIR) or, for the agent, on its command line, so a
# test can find any that outlived their sandbox.
MARKER = "SANDBOX_KERNEL_LOCAL_TEST"
# Kernel ports are picked here: below the ephemeral range (as the real inside ports are),
# so the agent's connect retries cannot self-connect.
PORT_RANGE = (20000, 32000)


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``backend: local-test`` valid for one test."""
    monkeypatch.setitem(registry.BACKENDS, NAME, f"{__name__}:LocalBackend")


@dataclass
class LocalSandbox:
    """One running local sandbox."""

    name: str
    root: Path  # its /tmp, home and run folders
    ports: dict[int, int]  # inside port -> the port its kernel really binds
    proc: subprocess.Popen[bytes]
    pipes: tuple[int, int] | None  # our ends (its stdin, its stdout) until attached
    owner: Owner
    log: Path
    claims: list[Owner] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home" / "sandbox"


class LocalBackend(SandboxBackend):
    name = NAME
    label = "no isolation, tests only"

    # A test may replace the sandbox's command (e.g. by one that hangs, as an image whose
    # python3 never answers would); None: the bootstrap command the provisioner gives.
    command_override: ClassVar[list[str] | None] = None
    # Variables a test puts in the agent's own environment, as a container runtime does
    # (Docker's HOSTNAME, the kubelet's KUBERNETES_SERVICE_HOST).
    agent_env: ClassVar[dict[str, str]] = {}
    # Whether the preflight asks the agent to set the kernel's rlimits (as a pod's must).
    agent_rlimits: ClassVar[bool] = False
    # Shared by every instance: a pooled sandbox is removed by its claimer's backend.
    sandboxes: ClassVar[dict[str, LocalSandbox]] = {}
    created: ClassVar[dict[str, Path]] = {}  # name -> root of every one ever created here
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, log: logging.Logger | None = None, **settings: Any) -> None:
        super().__init__(log)

    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        return Preflight(
            runtime=NAME,
            warnings=("the local test backend isolates nothing",),
            agent_rlimits=self.agent_rlimits,
        )

    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        return await asyncio.to_thread(self._spawn, policy, command, owner, name)

    def _spawn(self, policy: SandboxPolicy, command: list[str], owner: Owner, name: str) -> str:
        root = Path(tempfile.mkdtemp(prefix="sk-local-"))
        root.chmod(0o755)
        tmp = root / "tmp"
        tmp.mkdir(mode=0o1777)
        tmp.chmod(0o1777)
        home = root / "home" / "sandbox"
        home.mkdir(parents=True, mode=0o700)
        ports = {inside: _free_port() for inside in INSIDE_PORTS.values()}
        if self.command_override is not None:
            command = list(self.command_override)
        elif command[:1] == ["python3"]:
            # The interpreter running the tests (>= 3.10; the agent needs >= 3.8), whatever
            # the host's python3 is. With -I -S it sees no site-packages, as in an image.
            command = [sys.executable, *command[1:]]
        # The agent makes itself undumpable, which hides its environment from its own uid:
        # its command line carries the marker too (an argument stage 1 never reads).
        command = [*command, f"{MARKER}={name}"]
        uid, _, gid = policy.user.partition(":")
        config = {
            "root": str(root),
            "map_uid": [int(uid), int(gid or uid)] if os.geteuid() == 0 else None,
            "paths": {"/tmp": str(tmp), policy.home: str(home)},
            "ports": {str(k): v for k, v in ports.items()},
            "env": {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HOME": str(home),
                "TMPDIR": str(tmp),
                "SANDBOX_KERNEL_RUN_DIR": str(root / "run"),
                MARKER: name,
                **self.agent_env,
            },
            # what the sandbox gives its kernel beyond the policy's environment: its /tmp
            # (a real one has its own), and the marker
            "kernel_env": {"TMPDIR": str(tmp), MARKER: name},
        }
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        log = root / "sandbox.log"
        try:
            with log.open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(SHIM), json.dumps(config), "--", *command],
                    stdin=stdin_r,
                    stdout=stdout_w,
                    stderr=err,
                    cwd=root,
                    env={**os.environ, MARKER: name},
                    start_new_session=True,
                )
        except BaseException:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            shutil.rmtree(root, ignore_errors=True)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        with self._lock:
            self.sandboxes[name] = LocalSandbox(
                name, root, ports, proc, (stdin_w, stdout_r), owner, log
            )
            self.created[name] = root
        return name

    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        with self._lock:
            sandbox = self.sandboxes.get(sandbox_id)
            pipes = sandbox.pipes if sandbox else None
            if sandbox is not None:
                sandbox.pipes = None
        if pipes is None:
            raise SandboxError(f"sandbox {sandbox_id} is gone or already attached")
        await RelayThread.get().run(session.attach_pipes(*pipes))

    async def start(self, sandbox_id: str) -> None:
        """Nothing to do: the process runs since ``create`` and waits for the agent."""

    async def claimed(self, sandbox_id: str, owner: Owner) -> None:
        with self._lock:
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox is not None:
                sandbox.claims.append(owner)

    async def kill(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self.kill_now, sandbox_id)

    @classmethod
    def kill_now(cls, sandbox_id: str) -> None:
        """End the whole sandbox at once (blocking; also how a test makes one die)."""
        with cls._lock:
            sandbox = cls.sandboxes.get(sandbox_id)
        if sandbox is not None and sandbox.proc.poll() is None:
            sandbox.proc.send_signal(signal.SIGTERM)  # local_sandbox.py kills its tree

    async def remove(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._remove, sandbox_id)
        except RuntimeError:  # interpreter shutdown: no new worker threads
            self._remove(sandbox_id)

    @classmethod
    def _remove(cls, sandbox_id: str) -> None:
        with cls._lock:
            sandbox = cls.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return
        if sandbox.proc.poll() is None:
            sandbox.proc.send_signal(signal.SIGTERM)
        try:
            sandbox.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it did not end its tree: end what we can
            os.killpg(sandbox.proc.pid, signal.SIGKILL)
            sandbox.proc.wait()
        if sandbox.pipes is not None:
            for fd in sandbox.pipes:
                os.close(fd)
        shutil.rmtree(sandbox.root, ignore_errors=True)

    @classmethod
    def remove_all(cls) -> None:
        for name in list(cls.sandboxes):
            cls._remove(name)

    def describe(self) -> dict[str, Any]:
        return {"backend": NAME}


atexit.register(LocalBackend.remove_all)


def _free_port() -> int:
    """A port of 127.0.0.1 in PORT_RANGE that nothing listens on now."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SandboxError("no free port for a local test sandbox")


def marked_processes(names: list[str] | None = None) -> dict[int, str]:
    """pid -> sandbox name of every process on the host that belongs to a local sandbox
    (of ``names``, default every one this process created)."""
    wanted = {f"{MARKER}={n}".encode() for n in (LocalBackend.created if names is None else names)}
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        words: list[bytes] = []
        for part in ("cmdline", "environ"):  # (an undumpable process's environ: EACCES)
            try:
                with open(f"/proc/{entry}/{part}", "rb") as f:
                    words += f.read().split(b"\0")
            except OSError:
                pass
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state in ("Z", "X"):
            continue  # gone; only its parent's wait is missing
        hit = wanted.intersection(words)
        if hit:
            found[int(entry)] = hit.pop().decode().partition("=")[2]
    return found
