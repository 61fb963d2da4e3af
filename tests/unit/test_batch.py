"""nbclient's client after the host stopped a sandbox (``sandbox_kernel/batch.py``), in the
unit tier: real AsyncKernelManager, relay, agent and ipykernel on the local test backend
(tests/fakes/local_backend.py); the host's reason comes the way a backend's OOM watcher
or a protocol error gives it. The documented nbconvert command on a real memory bomb is
tests/integration/test_cli.py's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async

from sandbox_kernel import endings
from sandbox_kernel.batch import RestartingClient
from sandbox_kernel.relay.iopub import ENAME
from tests.fakes import local_backend
from tests.fakes.harness import TIMEOUT, Leftovers, provisioner, write_spec
from tests.fakes.local_backend import LocalBackend


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelSpecManager]:
    """Kernelspec ``local`` (no pool) on the local backend; after the test, nothing left."""
    local_backend.register(monkeypatch)
    folder = tmp_path / "kernels"
    folder.mkdir()
    write_spec(folder, "local", {})
    before = Leftovers()
    yield KernelSpecManager(kernel_dirs=[str(folder)])
    before.check()


async def _running_cell(specs: KernelSpecManager) -> tuple[AsyncKernelManager, Any, str]:
    """A kernel whose client (the one nbconvert's config names) runs a long cell, once
    the kernel has said on IOPub that it runs it (so the relay knows the request)."""
    km = AsyncKernelManager(
        kernel_name="local", kernel_spec_manager=specs, client_factory=RestartingClient
    )
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=TIMEOUT)
    msg_id = await ensure_async(kc.execute("import time; time.sleep(600)"))
    while True:
        msg = await kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return km, kc, msg_id


async def _reply_to(kc: Any, msg_id: str) -> dict[str, Any]:
    while True:
        reply: dict[str, Any] = await kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def test_the_next_request_goes_to_the_restarted_kernel(specs: KernelSpecManager) -> None:
    """The relay answers the running cell with the reason on the old shell connection and
    closes it; a request written there before ZeroMQ sees it closed is lost, and nbclient
    (no timeout) waits for its reply forever. So the next request is sent only after the
    restart. The reason comes as in the OOM watchers: reported, then the sandbox ended."""

    async def scenario() -> None:
        km, kc, running = await _running_cell(specs)
        prov = provisioner(km)
        stopped = prov.session
        try:
            sandbox_id = str(prov.sandbox_id)
            endings.report(sandbox_id, endings.MEMORY_LIMIT)
            LocalBackend.kill_now(sandbox_id)
            reply = await _reply_to(kc, running)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == ENAME
            assert "memory limit" in reply["content"]["evalue"]
            sent_to: list[object] = []
            send = kc.shell_channel.send

            def noting(msg: dict[str, Any]) -> None:  # which sandbox the request goes to
                sent_to.append(prov.session)
                send(msg)

            kc.shell_channel.send = noting
            after = await ensure_async(kc.execute("print(6 * 7)"))
            assert sent_to and sent_to[0] is not None and sent_to[0] is not stopped
            assert (await _reply_to(kc, after))["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    asyncio.run(scenario())


def test_a_dead_kernel_waits_for_the_relays_reply_then_restarts(
    specs: KernelSpecManager,
) -> None:
    """nbclient asks ``is_alive`` each second: asked just after the sandbox's pipe broke
    (a protocol error, told when the end is seen), before the relay thread has answered
    the running cell, the client waits for that answer and restarts, instead of reporting
    the kernel dead (nbclient's DeadKernelError: no notebook written)."""

    async def scenario() -> None:
        km, kc, running = await _running_cell(specs)
        prov = provisioner(km)
        session = prov.session
        assert session is not None
        try:
            prov.relay.loop.call_soon_threadsafe(session.fail, "a test's broken frame")
            await asyncio.to_thread(session.dead.wait, TIMEOUT)  # the relay thread sets it
            assert await kc.is_alive()
            reply = await _reply_to(kc, running)
            assert reply["content"]["ename"] == ENAME
            assert "a test's broken frame" in reply["content"]["evalue"]
            after = await ensure_async(kc.execute("print(6 * 7)"))
            assert (await _reply_to(kc, after))["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    asyncio.run(scenario())
