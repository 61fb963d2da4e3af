"""The provisioner's lifecycle in the unit tier: real jupyter_client (KernelManager and
AsyncKernelManager), real relay, real agent, real ipykernel; only the isolation is fake
(the local test backend, tests/fakes/local_backend.py: host processes, no Docker).

Every test ends by checking that nothing is left: no process of any sandbox it created,
no port of this process, no sandbox folder, no max_kernels slot, no pooled sandbox.
The same behaviours against real sandboxes are in tests/integration/.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager
from traitlets.config import Config

from sandbox_kernel.errors import SandboxError
from sandbox_kernel.kernel_slots import SLOTS, KernelLimitReached
from sandbox_kernel.pool import WarmPool
from sandbox_kernel.provisioner import SandboxProvisioner
from tests.fakes import local_backend
from tests.fakes.harness import (
    KERNEL_ARGV,
    Leftovers,
    kernel_ports_listening,
    pool_ready,
    provisioner,
    sandbox_of,
    start,
    wait_until,
    write_spec,
)
from tests.fakes.local_backend import LocalBackend, marked_processes
from tests.helpers import BlockingCalls, listening_ports

# The uid the kernel runs as: the caller's, or the policy's in a user namespace as root.
KERNEL_UID = 1000 if os.geteuid() == 0 else os.geteuid()


@pytest.fixture
def kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernels folder (empty); the local backend registered for this test only."""
    local_backend.register(monkeypatch)
    folder = tmp_path / "kernels"
    folder.mkdir()
    return folder


@pytest.fixture
def specs(kernels: Path) -> Iterator[KernelSpecManager]:
    """Kernelspecs ``local`` (no pool), ``pooled`` (pool_size 1) and ``one`` (max_kernels 1)
    on the local backend; after the test, nothing left."""
    write_spec(kernels, "local", {})
    write_spec(kernels, "pooled", {"pool_size": 1})
    write_spec(kernels, "one", {"max_kernels": 1})
    before = Leftovers()
    yield KernelSpecManager(kernel_dirs=[str(kernels)])
    before.check()


def _pids(km: KernelManager) -> dict[int, str]:
    return marked_processes([str(provisioner(km).sandbox_id)])


# -- start, work, shutdown ---------------------------------------------------------------


def test_start_runs_the_kernel_through_the_agent_and_shutdown_leaves_nothing(
    specs: KernelSpecManager,
) -> None:
    ports_before = set(listening_ports(own_only=True))
    kernel = start(specs, "local")
    try:
        prov = provisioner(kernel.km)
        sandbox = sandbox_of(kernel.km)
        info = kernel.km.get_connection_info()
        host_ports = {info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port")}
        assert info["ip"] == "127.0.0.1" and host_ports <= set(listening_ports(own_only=True))
        facts = kernel.value(
            "import os, json, sys\n"
            "print(json.dumps([os.getuid(), os.getcwd(), os.environ['HOME'],"
            " 'JPY_SESSION_NAME' in os.environ, sys.executable]))"
        )
        # The kernel runs under the sandbox's uid, in its home, with the policy's environment
        # only (nothing of this process's, e.g. Jupyter's own variables).
        assert facts[0] == KERNEL_UID
        assert facts[1] == facts[2] == str(sandbox.home)
        assert facts[3] is False and facts[4] == KERNEL_ARGV[0]
        # The kernel serves on its own ports, reached only through the relay.
        assert kernel_ports_listening(sandbox) == set(sandbox.ports.values())
        assert not host_ports & set(sandbox.ports.values())
        assert not prov.last_start_warm and prov.sandbox_id == sandbox.name
        pids = _pids(kernel.km)
        assert len(pids) >= 3, pids  # the sandbox process, the agent, the kernel
    finally:
        kernel.stop()
    assert not kernel.km.has_kernel
    assert not marked_processes([sandbox.name])
    assert not kernel_ports_listening(sandbox)
    assert not sandbox.root.exists()
    assert set(listening_ports(own_only=True)) <= ports_before


def test_the_kernel_gets_the_policys_environment_not_the_agents(
    specs: KernelSpecManager, kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the container runtime puts in the agent's environment (the kubelet's
    KUBERNETES_SERVICE_HOST in every pod, Docker's HOSTNAME) does not reach the kernel,
    cold or claimed from the warm pool; the policy's ``env`` does."""
    monkeypatch.setattr(LocalBackend, "agent_env", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    write_spec(kernels, "env-pooled", {"pool_size": 1, "env": {"SK_POLICY": "yes"}})
    code = (
        "import os, json\n"
        "print(json.dumps([os.environ.get(n) for n in ('KUBERNETES_SERVICE_HOST', 'SK_POLICY')]))"
    )
    first = start(specs, "env-pooled")
    kernels_started = [first]
    try:
        assert not provisioner(first.km).last_start_warm
        assert first.value(code) == [None, "yes"]
        wait_until(lambda: pool_ready(provisioner(first.km).policy), "the warm pool to fill")
        warm = start(specs, "env-pooled")
        kernels_started.append(warm)
        assert provisioner(warm.km).last_start_warm
        assert warm.value(code) == [None, "yes"]
    finally:
        for kernel in kernels_started:
            kernel.stop()
        WarmPool.drain_all()


def test_the_agent_sets_the_policys_rlimits_where_the_sandbox_cannot(
    specs: KernelSpecManager, kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend whose sandboxes have no rlimits of their own (a pod) has the agent set
    the policy's on the kernel, soft and hard, so kernel code cannot raise them."""
    monkeypatch.setattr(LocalBackend, "agent_rlimits", True)
    write_spec(kernels, "limited", {"nofile_limit": 256, "nproc_limit": 65536, "pids_limit": 65536})
    kernel = start(specs, "limited")
    try:
        found = kernel.value(
            "import json, resource\n"
            "print(json.dumps([resource.getrlimit(getattr(resource, 'RLIMIT_' + n))\n"
            "                  for n in ('NOFILE', 'NPROC', 'CORE')]))"
        )
    finally:
        kernel.stop()
    assert found == [[256, 256], [65536, 65536], [0, 0]]


def test_shutdown_now_kills_the_sandbox(specs: KernelSpecManager) -> None:
    kernel = start(specs, "local")
    sandbox = sandbox_of(kernel.km)
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=True)
    assert not marked_processes([sandbox.name]) and not sandbox.root.exists()


# -- restart -------------------------------------------------------------------------------


def test_restart_is_a_fresh_sandbox_behind_the_same_ports(specs: KernelSpecManager) -> None:
    kernel = start(specs, "one")  # max_kernels 1: the restart keeps its slot
    try:
        slots = SLOTS.in_use()
        # (Kernel code sees the host's files: its /tmp is $TMPDIR, the sandbox's folder.)
        kernel.run(
            "import os; state = 123; open(os.environ['TMPDIR'] + '/left-by-old', 'w').write('x')"
        )
        old = sandbox_of(kernel.km)
        assert (old.root / "tmp" / "left-by-old").exists()
        before = kernel.km.get_connection_info()
        kernel.km.restart_kernel(now=False)
        kernel.kc.wait_for_ready(timeout=60)
        new = sandbox_of(kernel.km)
        assert new.name != old.name
        assert kernel.value(
            "import os, json\n"
            "print(json.dumps(['state' in globals(),"
            " os.path.exists(os.environ['TMPDIR'] + '/left-by-old')]))"
        ) == [False, False]
        after = kernel.km.get_connection_info()
        for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            assert after[key] == before[key], key
        assert not marked_processes([old.name]) and not old.root.exists()
        assert SLOTS.in_use() == slots
        # The slot is this kernel's still: a second one is refused.
        with pytest.raises(KernelLimitReached):
            KernelManager(kernel_name="one", kernel_spec_manager=specs).start_kernel()
        kernel.km.restart_kernel(now=True)
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("print(2 + 3)") == 5
    finally:
        kernel.stop()


def test_max_kernels_counts_kernels_until_shutdown(specs: KernelSpecManager) -> None:
    base = SLOTS.in_use()
    first = start(specs, "one")
    try:
        assert SLOTS.in_use() == base + 1
        sandboxes = set(LocalBackend.sandboxes)
        ports = set(listening_ports(own_only=True))
        second = KernelManager(kernel_name="one", kernel_spec_manager=specs)
        with pytest.raises(KernelLimitReached, match="max_kernels=1"):
            second.start_kernel()
        # Refused before anything started: no sandbox, no port, no slot.
        assert set(LocalBackend.sandboxes) == sandboxes
        assert set(listening_ports(own_only=True)) == ports
        assert SLOTS.in_use() == base + 1 and not second.has_kernel
    finally:
        first.stop()
    assert SLOTS.in_use() == base
    again = start(specs, "one")
    again.stop()


# -- the warm pool -------------------------------------------------------------------------


def test_a_warm_start_claims_a_pooled_sandbox_once(specs: KernelSpecManager) -> None:
    first = start(specs, "pooled")  # cold; then the pool fills
    kernels = [first]
    try:
        policy = provisioner(first.km).policy
        assert not provisioner(first.km).last_start_warm
        wait_until(lambda: pool_ready(policy), "the warm pool to fill")
        pooled = {n for n, s in LocalBackend.sandboxes.items() if s.owner.pooled}
        warm = start(specs, "pooled")
        kernels.append(warm)
        prov = provisioner(warm.km)
        assert prov.last_start_warm
        sandbox = sandbox_of(warm.km)
        assert sandbox.name in pooled and sandbox.name != sandbox_of(first.km).name
        assert [o.kernel_id for o in sandbox.claims] == [warm.km.kernel_id]
        # Initialised with a placeholder key; it now holds ours, in its connection file too.
        written = json.loads((sandbox.root / "tmp/.sandbox-kernel/kernel.json").read_text())
        assert written["key"] == warm.km.session.key.decode()
        assert warm.value("print(6 * 7)") == 42
        # The two kernels are apart: state, ports.
        warm.run("mine = 1")
        assert first.value("import json; print(json.dumps('mine' in globals()))") is False
        assert not set(sandbox.ports.values()) & set(sandbox_of(first.km).ports.values())
        # A restart takes another pooled sandbox and removes this one: never reused.
        wait_until(lambda: pool_ready(policy), "the warm pool to refill")
        warm.km.restart_kernel(now=True)
        warm.kc.wait_for_ready(timeout=60)
        assert provisioner(warm.km).last_start_warm
        assert sandbox_of(warm.km).name != sandbox.name
        assert not marked_processes([sandbox.name]) and not sandbox.root.exists()
        assert warm.value("print(2 + 3)") == 5
    finally:
        for kernel in kernels:
            kernel.stop()
    unclaimed = [n for n, s in LocalBackend.sandboxes.items() if s.owner.pooled]
    assert unclaimed, "the pool should hold a sandbox until drained"
    WarmPool.drain_all()
    assert not [n for n in unclaimed if n in LocalBackend.sandboxes]
    assert not marked_processes(unclaimed)


def test_a_dead_pooled_sandbox_is_skipped_and_removed(specs: KernelSpecManager) -> None:
    first = start(specs, "pooled")
    kernels = [first]
    try:
        policy = provisioner(first.km).policy
        wait_until(lambda: pool_ready(policy), "the warm pool to fill")
        [dead] = [n for n, s in LocalBackend.sandboxes.items() if s.owner.pooled]
        LocalBackend.kill_now(dead)
        wait_until(lambda: not marked_processes([dead]), "the pooled sandbox to die")
        pool = next(p for p in list(WarmPool._pools.values()) if p.policy == policy)
        wait_until(lambda: pool.ready[0].session.dead.is_set(), "its session to end")
        cold = start(specs, "pooled")
        kernels.append(cold)
        assert not provisioner(cold.km).last_start_warm
        wait_until(lambda: dead not in LocalBackend.sandboxes, "the dead one to be removed")
    finally:
        for kernel in kernels:
            kernel.stop()


def test_a_failed_fill_is_retried(
    specs: KernelSpecManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's first sandbox fails to start (as one killed while booting did, once, in
    CI): the pool tries again after a second instead of staying empty until the next
    launch."""
    create = LocalBackend.create
    failed: list[str] = []

    async def fails_once(self: LocalBackend, *args: object, **kwargs: object) -> str:
        owner = kwargs["owner"]
        if getattr(owner, "pooled", False) and not failed:
            failed.append(str(kwargs["name"]))
            raise SandboxError("the sandbox's pipe closed")
        return await create(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalBackend, "create", fails_once)
    first = start(specs, "pooled")
    try:
        policy = provisioner(first.km).policy
        wait_until(lambda: pool_ready(policy), "the warm pool to fill after a failed fill")
        assert failed and failed[0] not in LocalBackend.sandboxes
    finally:
        first.stop()


# -- failures ------------------------------------------------------------------------------


def _start_fails(specs: KernelSpecManager, name: str) -> BaseException:
    km = KernelManager(kernel_name=name, kernel_spec_manager=specs)
    with pytest.raises(Exception) as info:
        km.start_kernel()
    assert not km.has_kernel
    return info.value


def test_launch_timeout_removes_the_sandbox(
    kernels: Path, specs: KernelSpecManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox that never answers (its python3 hangs) is removed when launch_timeout
    passes; the error names the setting."""
    write_spec(kernels, "quick", {"launch_timeout": 1})
    hang = [sys.executable, "-c", "import time; time.sleep(3600)"]
    monkeypatch.setattr(LocalBackend, "command_override", hang)
    created = set(LocalBackend.created)
    err = _start_fails(specs, "quick")
    assert isinstance(err, SandboxError) and "launch_timeout=1s" in str(err), err
    [name] = set(LocalBackend.created) - created
    assert name not in LocalBackend.sandboxes and not marked_processes([name])


def test_a_kernel_that_cannot_start_fails_with_its_error(
    kernels: Path, specs: KernelSpecManager, tmp_path: Path
) -> None:
    """The agent cannot run the kernel's command: its error reaches the user, nothing left."""
    write_spec(kernels, "missing", {}, argv=[str(tmp_path / "no-python"), "{connection_file}"])
    err = _start_fails(specs, "missing")
    assert isinstance(err, SandboxError), err
    assert "ended during start-up" in str(err) and "no-python" in str(err), err


def test_a_kernelspec_placeholder_without_meaning_inside_is_refused(
    kernels: Path, specs: KernelSpecManager
) -> None:
    write_spec(kernels, "resdir", {}, argv=[*KERNEL_ARGV, "--dir={resource_dir}"])
    err = _start_fails(specs, "resdir")
    assert isinstance(err, SandboxError) and "{resource_dir}" in str(err), err


def test_a_kernel_whose_import_fails_dies_and_shows_its_output(
    kernels: Path, specs: KernelSpecManager
) -> None:
    """Its process starts, ipykernel's import fails (-S: no site-packages, as in an image
    without it): the kernel's own output is in the console tail; shutdown cleans up."""
    argv = [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_spec(kernels, "noipykernel", {}, argv=argv)
    km = KernelManager(kernel_name="noipykernel", kernel_spec_manager=specs)
    km.start_kernel()
    try:
        wait_until(lambda: not km.is_alive(), "the kernel to exit")
        prov = provisioner(km)
        assert prov.console is not None
        assert "No module named ipykernel_launcher" in prov.console.tail
        assert asyncio.run(prov.poll()) == 1
    finally:
        km.shutdown_kernel(now=True)


# -- a kernel or a sandbox that dies -------------------------------------------------------


def test_poll_and_wait_see_a_dead_sandbox(specs: KernelSpecManager) -> None:
    kernel = start(specs, "local")
    try:
        prov = provisioner(kernel.km)
        assert asyncio.run(prov.poll()) is None
        LocalBackend.kill_now(str(prov.sandbox_id))  # the whole sandbox at once
        assert asyncio.run(asyncio.wait_for(prov.wait(), 30)) == -signal.SIGKILL
        assert not kernel.km.is_alive()
        # A restart brings a working kernel back.
        kernel.km.restart_kernel(now=True)
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("print(6 * 6)") == 36
    finally:
        kernel.stop()


def test_a_kernel_that_exits_reports_its_status(specs: KernelSpecManager) -> None:
    kernel = start(specs, "local")
    try:
        prov = provisioner(kernel.km)
        sandbox = sandbox_of(kernel.km)
        kernel.kc.execute("import os; os._exit(3)")
        assert asyncio.run(asyncio.wait_for(prov.wait(), 30)) == 3
        # The agent ended the sandbox with its kernel; the folder goes at cleanup.
        wait_until(lambda: not marked_processes([sandbox.name]), "the sandbox to end")
    finally:
        kernel.stop()


def test_jupyters_restarter_restarts_a_dead_sandbox(specs: KernelSpecManager) -> None:
    from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager

    async def scenario() -> None:
        config = Config({"KernelRestarter": {"time_to_dead": 0.2}})
        km = AsyncIOLoopKernelManager(kernel_name="local", kernel_spec_manager=specs, config=config)
        restarts: list[str] = []
        await km.start_kernel()
        km.start_restarter()
        km.add_restart_callback(lambda: restarts.append("restart"), "restart")
        prov = km.provisioner
        assert isinstance(prov, SandboxProvisioner)
        first = prov.sandbox_id
        try:
            LocalBackend.kill_now(str(first))
            for _ in range(600):
                if restarts and prov.sandbox_id not in (None, first) and await km.is_alive():
                    break
                await asyncio.sleep(0.05)
            assert restarts, "jupyter_client's restarter did not notice the dead sandbox"
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=60)
                reply = await kc.execute_interactive("x = 1", timeout=30)
                assert reply["content"]["status"] == "ok"
            finally:
                kc.stop_channels()
        finally:
            km.stop_restarter()
            await km.shutdown_kernel(now=True)
        assert first is not None and not marked_processes([first])

    asyncio.run(scenario())


# -- interrupt -------------------------------------------------------------------------------


def test_interrupt_ends_a_running_cell_and_the_kernel_goes_on(specs: KernelSpecManager) -> None:
    kernel = start(specs, "local")
    try:
        msg_id, reply = kernel.interrupt_running_cell()
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert kernel.value("print(6 * 7)") == 42
    finally:
        kernel.stop()


# -- the exchange: copy-in, export, expose -----------------------------------------------------


def test_copy_in_export_and_expose_go_through_the_exchange(
    kernels: Path, specs: KernelSpecManager, tmp_path: Path
) -> None:
    notebook = tmp_path / "notebook"
    (notebook / "data").mkdir(parents=True)
    (notebook / "data" / "table.csv").write_text("a,b\n1,2\n")
    (notebook / "notes.txt").write_text("hello")
    write_spec(kernels, "exchange", {"copy_in": ["data", "notes.txt"]})
    kernel = start(specs, "exchange", cwd=str(notebook))
    try:
        # Copied in at start, into the sandbox's home (its working folder).
        assert kernel.value(
            "import json\nprint(json.dumps([open('data/table.csv').read(), open('notes.txt').read()]))"
        ) == ["a,b\n1,2\n", "hello"]
        # Exported: a file of the sandbox arrives in the notebook's folder.
        where = kernel.value(
            "import json, sandboxed\nopen('result.txt', 'w').write('42')\n"
            "print(json.dumps(sandboxed.export('result.txt')))"
        )
        assert (notebook / where).read_text() == "42"
        assert Path(where).parts[0] == "sandbox-exports"
        # Exposed: a server of the kernel is reached from the host's 127.0.0.1.
        url = kernel.value(
            "import json, socket, threading, sandboxed\n"
            "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
            "def serve():\n"
            "    c, _ = srv.accept(); c.sendall(b'from the sandbox'); c.close()\n"
            "threading.Thread(target=serve, daemon=True).start()\n"
            "print(json.dumps(sandboxed.expose(srv.getsockname()[1])))"
        )
        host_port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert host_port in provisioner(kernel.km).exposed_ports().values()
        with socket.create_connection(("127.0.0.1", host_port), timeout=30) as conn:
            conn.settimeout(30)
            assert conn.recv(100) == b"from the sandbox"
        # The copy-in happens again at a restart (a fresh home), from the host's files now.
        (notebook / "notes.txt").write_text("changed")
        kernel.km.restart_kernel(now=True)
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("import json\nprint(json.dumps(open('notes.txt').read()))") == (
            "changed"
        )
    finally:
        kernel.stop()


# -- async all the way -------------------------------------------------------------------------


def test_the_lifecycle_never_blocks_the_event_loop(specs: KernelSpecManager) -> None:
    """Start, interrupt, restart and shut down through AsyncKernelManager: no process is
    started or waited for, and nothing sleeps, on the caller's event loop thread (backends
    run blocking calls in worker threads, the relay on its own loop)."""

    async def scenario() -> int:
        km = AsyncKernelManager(kernel_name="local", kernel_spec_manager=specs)
        await km.start_kernel()
        try:
            await km.interrupt_kernel()
            await km.restart_kernel(now=True)
        finally:
            await km.shutdown_kernel(now=True)
        return threading.get_ident()

    with BlockingCalls() as calls:
        loop_thread = asyncio.run(scenario())
    assert calls.count("subprocess.Popen") >= 2, "the sandboxes were started elsewhere?"
    blocked = calls.on_thread(loop_thread)
    assert not blocked, "blocking calls on the event loop:\n" + "\n".join(blocked)


# -- saved state -------------------------------------------------------------------------------


def test_saved_state_names_the_sandbox_and_a_reloaded_one_is_not_ours(
    specs: KernelSpecManager,
) -> None:
    kernel = start(specs, "local")
    try:
        prov = provisioner(kernel.km)
        info = asyncio.run(prov.get_provisioner_info())
        assert info["sandbox_id"] == prov.sandbox_id and info["backend"] == "local-test"
        assert set(info["host_ports"].values()) == {
            kernel.km.get_connection_info()[k]
            for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        }
        other = SandboxProvisioner(kernel_id="other", kernel_spec=prov.kernel_spec, parent=None)
        asyncio.run(other.load_provisioner_info(info))
        # Another process's kernel: known, never driven from here.
        assert other.has_process and asyncio.run(other.poll()) == 1
    finally:
        kernel.stop()
