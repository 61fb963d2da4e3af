"""JupyterLab's kernel usage panel (jupyter-resource-usage, installed with JupyterLab by the
quickstart) shows a sandboxed kernel's memory and CPU: the extension's server handler sends
``usage_request`` on the kernel's control channel, through the relay, and ipykernel answers
from inside the sandbox with psutil. The figures are the sandbox's own view: its memory
total is the kernelspec's ``memory_limit`` (gVisor's /proc/meminfo), not the host's.

A real JupyterLab server, real sandboxes (the Docker backend and the runsc backend), the
extension's own REST route, which is what the panel polls, and the panel itself in
headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
from collections.abc import Iterator
from typing import Any

import docker
import nbformat
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.settings import parse_size
from tests.helpers import BACKEND_CONFIGS, REPO, TEST_RUNTIME
from tests.integration.browser import chromium_page, wait_for
from tests.integration.servers import JupyterServer, ws_execute

# Neither the default 2g nor the host's size: the total must be this kernelspec's.
MEMORY_LIMIT = "640m"
ALLOC = 200 * 2**20
SCREENSHOT = REPO / "test-artifacts" / "jupyterlab-kernel-usage.png"
SPECS: dict[str, dict[str, Any]] = {
    "usage-docker": {"runtime": TEST_RUNTIME, "pool_size": 0},
    "usage-runsc": BACKEND_CONFIGS["runsc"],
}


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[JupyterServer]:
    workdir = tmp_path_factory.mktemp("kernel-usage")
    kernels = workdir / "jupyter-path" / "kernels"
    for name, config in SPECS.items():
        (kernels / name).mkdir(parents=True)
        spec = build_kernelspec({"image": DEFAULT_IMAGE, **config, "memory_limit": MEMORY_LIMIT})
        (kernels / name / "kernel.json").write_text(json.dumps(spec))
    server = JupyterServer("jupyterlab", workdir, kernels.parent)
    # No "official Jupyter news?" toast over the panel in the screenshot.
    (workdir / "config" / "labconfig").mkdir(parents=True)
    disabled = {"@jupyterlab/apputils-extension:announcements": True}
    (workdir / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": disabled})
    )
    with server.running(docker_client):
        yield server


def usage(server: JupyterServer, kernel_id: str) -> dict[str, Any]:
    """What the kernel usage panel gets: the extension's reply for ``kernel_id``."""
    path = f"/api/metrics/v1/kernel_usage/get_usage/{kernel_id}"
    try:
        reply = server.api("GET", path, timeout=60)
    except urllib.error.HTTPError as exc:
        raise AssertionError(
            f"GET {path}: {exc.code}; is jupyter-resource-usage installed (scripts/venv.sh)?"
        ) from None
    assert reply.get("msg_type") == "usage_reply", f"no usage_reply: {reply}"
    content: dict[str, Any] = reply["content"]
    return content


def run(server: JupyterServer, kernel_id: str, code: str) -> str:
    async def go() -> str:
        url = server.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels"
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {server.token}"})
        )
        try:
            return await ws_execute(ws, code, "student", timeout=120)
        finally:
            ws.close()

    return asyncio.run(go())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_kernel_usage_is_the_sandboxs(lab: JupyterServer, name: str) -> None:
    kernel_id = lab.api("POST", "/api/kernels", {"name": name}, timeout=180)["id"]
    try:
        # The kernel's own view, to compare with: answered once it serves requests.
        inside = json.loads(
            run(lab, kernel_id, "import os, json; print(json.dumps([os.getpid(), os.cpu_count()]))")
        )
        before = usage(lab, kernel_id)
        assert "kernel_memory" in before, f"no psutil in the kernel's image: {before}"
        assert isinstance(before["kernel_memory"], int) and before["kernel_memory"] > 0, before
        assert isinstance(before["kernel_cpu"], float), before
        # The sandbox's memory, not the host's; CPUs and pid as the kernel sees them.
        limit = parse_size(MEMORY_LIMIT, "memory_limit")
        assert before["host_virtual_memory"]["total"] == limit, before
        assert [before["pid"], before["cpu_count"]] == inside, (before, inside)
        assert before["hostname"] != socket.gethostname(), before
        assert os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > limit  # else moot

        out = run(lab, kernel_id, f"block = b'x' * {ALLOC}\nprint('allocated', len(block))")
        assert f"allocated {ALLOC}" in out, out
        after = usage(lab, kernel_id)
        grown = after["kernel_memory"] - before["kernel_memory"]
        assert grown >= ALLOC * 3 // 4, f"kernel_memory grew by {grown} bytes: {before} {after}"
        assert after["host_virtual_memory"]["used"] > before["host_virtual_memory"]["used"]
    finally:
        lab.api("DELETE", f"/api/kernels/{kernel_id}", timeout=90)


def test_kernel_usage_panel_in_jupyterlab(lab: JupyterServer) -> None:
    """The panel a user opens (the gauge in the right sidebar) in a real browser: it shows
    the notebook's sandboxed kernel with the sandbox's memory as the total. Screenshot:
    test-artifacts/jupyterlab-kernel-usage.png."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "usage-docker",
        "display_name": "usage",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell("print('ready')")]
    nbformat.write(nb, lab.root / "usage.ipynb")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    with chromium_page(lab.workdir / "failure.png", 1100, lab.log) as page:
        page.goto(f"{lab.url}/lab/tree/usage.ipynb?token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        wait_for(lab.kernel_idle, "the sandboxed kernel to be idle")
        page.keyboard.press("Control+b")  # hide the file browser: a wider screenshot
        page.locator(
            '.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="kernelusage-panel-id"]'
        ).click()
        panel = page.locator(".jp-KernelUsage-view")
        total = format(parse_size(MEMORY_LIMIT, "memory_limit") / 2**20, ".2f")
        panel.get_by_text(f"Total: {total} MB").wait_for()
        page.screenshot(path=str(SCREENSHOT))
