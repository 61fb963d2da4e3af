"""The kernel behaves like a normal Jupyter kernel: run, interrupt, restart, die, shut down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest
from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.provisioner import SandboxProvisioner
from tests.helpers import (
    BlockingCalls,
    Kernel,
    container_exists,
    listening_ports,
    sandbox_id,
    wait_for_ready_pool,
)


def test_runs_real_work(shared_kernel: Kernel) -> None:
    result = shared_kernel.value(
        "import numpy as np, json\n"
        "a = np.arange(1_000_000, dtype=np.float64)\n"
        "print(json.dumps(float(a.sum())))"
    )
    assert result == float(sum(range(1_000_000)))


def test_rich_output_matplotlib(shared_kernel: Kernel) -> None:
    images: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("display_data", "execute_result"):
            if "image/png" in msg["content"]["data"]:
                images.append(msg["content"]["data"]["image/png"])

    reply = shared_kernel.kc.execute_interactive(
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()",
        timeout=120,
        output_hook=hook,
    )
    assert reply["content"]["status"] == "ok"
    assert images and len(images[0]) > 1000


def test_input_prompt(start_kernel) -> None:  # type: ignore[no-untyped-def]
    kernel: Kernel = start_kernel()
    kc = kernel.kc
    kc.allow_stdin = True
    msg_id = kc.execute("name = input('who? '); print('hello', name)", allow_stdin=True)
    req = kc.get_stdin_msg(timeout=30)
    assert req["content"]["prompt"] == "who? "
    kc.input("sandbox")
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            outputs.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert "hello sandbox" in "".join(outputs)


def test_interrupt_long_cell(shared_kernel: Kernel) -> None:
    """A cell that would sleep ten minutes ends with KeyboardInterrupt when interrupted (the
    reply's own content says so; no duration is compared), and the kernel goes on."""
    msg_id, reply = shared_kernel.interrupt_running_cell(600)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # The kernel still works afterwards.
    assert shared_kernel.value("print(6 * 7)") == 42


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_busy_kernel_shuts_down_without_noise(
    start_kernel: Callable[..., Kernel], warm: bool
) -> None:
    """Nothing but the kernel's own output on its console, whether it started cold or
    from the warm pool: no "running over TCP without encryption" warning (untrue of the
    sandbox's loopback), and no ZMQError traceback when a busy kernel is shut down
    (jupyter_client interrupts it, then asks it to shut down; ipykernel 7 closed the
    socket the interrupted cell's reply went through)."""
    if warm:
        wait_for_ready_pool(start_kernel())
    kernel = start_kernel("sandbox-python" if warm else "sandbox-cold")
    prov = kernel.km.provisioner
    assert isinstance(prov, SandboxProvisioner) and prov.console is not None
    assert prov.last_start_warm is warm
    msg_id = kernel.kc.execute(
        "import os, time\nos.write(2, b'on the console\\n')\n"
        "print('running', flush=True)\ntime.sleep(600)"
    )
    while True:  # the cell's own print (its execute_input, sent first, quotes it too)
        msg = kernel.kc.get_iopub_msg(timeout=60)
        content = msg["content"]
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            if content["name"] == "stdout" and "running" in content["text"]:
                break
    kernel.stop()
    console = prov.console.tail
    assert "on the console" in console  # what the kernel writes to its stderr is there
    for noise in ("Traceback", "ZMQError", "running over TCP without encryption"):
        assert noise not in console, console


def test_restart_gives_fresh_kernel(start_kernel, docker_client: docker.DockerClient) -> None:  # type: ignore[no-untyped-def]
    kernel: Kernel = start_kernel()
    kernel.run("secret_state = 123; open('/tmp/left-by-old-kernel', 'w').write('x')")
    old_sandbox = kernel.sandbox_id
    ports_before = dict(kernel.km.get_connection_info())
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.sandbox_id != old_sandbox
    state = kernel.value(
        "import os, json\n"
        "print(json.dumps(['secret_state' in globals(), os.path.exists('/tmp/left-by-old-kernel')]))"
    )
    assert state == [False, False]
    after = kernel.km.get_connection_info()
    assert {k: after[k] for k in ("shell_port", "iopub_port")} == {
        k: ports_before[k] for k in ("shell_port", "iopub_port")
    }
    assert not docker_client.containers.list(all=True, filters={"id": old_sandbox})


def test_ports_on_loopback_only_and_gone_after_shutdown(
    start_kernel: Callable[..., Kernel], docker_client: docker.DockerClient
) -> None:
    kernel: Kernel = start_kernel()
    info = kernel.km.get_connection_info()
    assert info["ip"] == "127.0.0.1"
    ports = [info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
    listening = listening_ports()
    for port in ports:
        assert listening.get(port) == "0100007F", f"port {port} listens on {listening.get(port)}"
    cid = kernel.sandbox_id
    assert container_exists(docker_client, cid)
    kernel.stop()
    assert not container_exists(docker_client, cid)
    listening = listening_ports(own_only=True)
    assert not [p for p in ports if p in listening]


def test_killed_container_is_restarted_by_jupyter(
    ksm: KernelSpecManager, docker_client: docker.DockerClient
) -> None:
    sandbox_ids: list[str | None] = []

    async def scenario() -> None:
        km = AsyncIOLoopKernelManager(kernel_name="sandbox-python", kernel_spec_manager=ksm)
        restarts: list[str] = []
        await km.start_kernel()
        km.start_restarter()  # callbacks can only be added once the restarter exists
        km.add_restart_callback(lambda: restarts.append("restart"), "restart")
        try:
            first = sandbox_id(km)
            sandbox_ids.append(first)
            docker_client.containers.get(first).kill()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                current = sandbox_id(km)
                if restarts and current and current != first and await km.is_alive():
                    break
                await asyncio.sleep(0.2)
            assert restarts, "jupyter_client's restarter did not notice the dead kernel"
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            reply = await kc.execute_interactive("x = 1", timeout=30)
            assert reply["content"]["status"] == "ok"
            kc.stop_channels()
        finally:
            sandbox_ids.append(sandbox_id(km))
            km.stop_restarter()
            await km.shutdown_kernel(now=True)

    asyncio.run(scenario())
    assert not [c for c in sandbox_ids if container_exists(docker_client, c)]


def test_server_crash_leaves_no_container(kernel_dirs, docker_client: docker.DockerClient) -> None:  # type: ignore[no-untyped-def]
    """The Jupyter process dies (SIGKILL): stdin closes, the agent ends the sandbox, Docker removes it."""
    script = (
        "import sys, time\n"
        "from jupyter_client.kernelspec import KernelSpecManager\n"
        "from jupyter_client.manager import KernelManager\n"
        f"ksm = KernelSpecManager(kernel_dirs=[{str(kernel_dirs)!r}])\n"
        "km = KernelManager(kernel_name='sandbox-python', kernel_spec_manager=ksm)\n"
        "km.start_kernel()\n"
        "print(km.provisioner.sandbox_id, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        cid = proc.stdout.readline().decode().strip()
        assert cid, "the child did not start a kernel"
        assert docker_client.containers.get(cid).status == "running"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not docker_client.containers.list(all=True, filters={"id": cid}):
            break
        time.sleep(0.2)
    assert not docker_client.containers.list(all=True, filters={"id": cid}), "orphan container"


def test_lifecycle_never_blocks_the_event_loop(ksm: KernelSpecManager) -> None:
    """Start, interrupt, restart and shut down through AsyncKernelManager: no Docker SDK
    request, no process started or waited for and no sleep happens on the caller's event
    loop thread (Docker calls run in worker threads, the relay on its own loop). Which
    thread made a call does not depend on how loaded the machine is."""
    from jupyter_client.manager import AsyncKernelManager

    async def scenario() -> int:
        km = AsyncKernelManager(kernel_name="sandbox-python", kernel_spec_manager=ksm)
        await km.start_kernel()
        try:
            await km.interrupt_kernel()
            await km.restart_kernel(now=True)
        finally:
            await km.shutdown_kernel(now=True)
        return threading.get_ident()

    with BlockingCalls() as calls:
        loop_thread = asyncio.run(scenario())
    # The sandboxes were created, started and removed through the SDK: the check has teeth.
    assert calls.count("Docker SDK HTTP request") >= 6, calls.calls
    blocked = calls.on_thread(loop_thread)
    assert not blocked, "blocking calls on the event loop:\n" + "\n".join(blocked)
