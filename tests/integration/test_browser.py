"""JupyterLab in a real browser: a user picks nothing but a notebook whose kernel is
"Python 3 (sandboxed)" and works in it as usual (output, a matplotlib figure, input(),
interrupt, restart, a widget), all inside gVisor. Headless Chromium from Debian driven by
Playwright; the JupyterLab server is a subprocess on 127.0.0.1 with a token.

The screenshot test-artifacts/jupyterlab-sandboxed.png shows the sandboxed outputs."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest

from tests.helpers import REPO
from tests.integration.browser import chromium_page, wait_for
from tests.integration.servers import JupyterServer

SCREENSHOT = REPO / "test-artifacts" / "jupyterlab-sandboxed.png"
FAILURE_SHOT = REPO / "test-artifacts" / "jupyterlab-failure.png"

CELLS = [
    # 0: where am I? gVisor's kernel release, the sandbox user, its own hostname.
    "import os, platform, socket\n"
    "print('SANDBOX release', platform.release(), 'uid', os.getuid(),\n"
    "      'host', socket.gethostname(), 'docker.sock', os.path.exists('/var/run/docker.sock'))",
    # 1: rich output rendered by the browser.
    "%matplotlib inline\n"
    "import matplotlib.pyplot as plt\n"
    "plt.figure(figsize=(4, 2)); plt.plot([0, 1, 4, 9, 16]); plt.title('drawn in the sandbox')\n"
    "plt.show()",
    # 2: stdin request answered in the browser.
    "name = input('your name? ')\nprint('hello', name, 'from', platform.release())",
    # 3: interrupted from the toolbar.
    "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\nprint('NOT ' + 'INTERRUPTED')  # split: the traceback quotes this line",
    # 4: after a restart: a fresh interpreter, still sandboxed.
    "import os, platform\nprint('RESTARTED', 'name' in globals(), platform.release(), os.getuid())",
    # 5: a widget: its model lives in the sandbox, its view in the page (comm messages).
    "import ipywidgets\nslider = ipywidgets.IntSlider(value=7, max=10, description='sandboxed')\nslider",
    # 6: the value moved in the page reached the model in the sandbox.
    "print('SLIDER', slider.value)",
]


@pytest.fixture
def lab(
    tmp_path: Path, kernel_dirs: Path, docker_client: docker.DockerClient
) -> Iterator[JupyterServer]:
    jupyter_path = tmp_path / "jupyter-path"  # JUPYTER_PATH/kernels: every test variant
    jupyter_path.mkdir()
    (jupyter_path / "kernels").symlink_to(kernel_dirs)
    server = JupyterServer("jupyterlab", tmp_path, jupyter_path)
    # No "official Jupyter news?" toast, and no nbgrader panels in the screenshot.
    labconfig = tmp_path / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    disabled = {"@jupyterlab/apputils-extension:announcements": True, "@jupyter/nbgrader": True}
    (labconfig / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "sandbox-python", "display_name": "Python 3 (sandboxed)", "language": "python",
    }  # fmt: skip
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbformat.write(nb, server.root / "untrusted.ipynb")
    # The server runs as another process: its kernels and warm pool must go with it.
    with server.running(docker_client):
        yield server


def running_ids(server: JupyterServer, client: docker.DockerClient) -> set[str]:
    # A kernel's sandbox may come from the warm pool (labels fixed at creation: no kernel
    # id), so the server's running sandboxes as a whole are compared across a restart.
    return {c.id for c in server.sandboxes(client) if c.status == "running"}


def test_jupyterlab_notebook_in_chromium(
    lab: JupyterServer, docker_client: docker.DockerClient
) -> None:
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)

    kernel, idle = lab.session_kernel, lab.kernel_idle

    with chromium_page(FAILURE_SHOT, 1200, lab.log) as page:
        page.goto(f"{lab.url}/lab/tree/untrusted.ipynb?token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        # The notebook's own kernel, launched by the server through the provisioner.
        wait_for(idle, "the sandboxed kernel to be idle")
        info = kernel()
        assert info["name"] == "sandbox-python"
        before_restart = running_ids(lab, docker_client)
        assert before_restart, "no running sandbox for the notebook's kernel"
        toolbar_kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")
        assert toolbar_kernel.inner_text().strip() == "Python 3 (sandboxed)"
        page.keyboard.press("Control+b")  # hide the file browser: a wider screenshot

        def cell(i: int) -> Any:
            return page.locator(".jp-Notebook .jp-Cell").nth(i)

        def run(i: int) -> None:
            cell(i).locator(".jp-InputPrompt").click()  # select (command mode)
            page.keyboard.press("Control+Enter")  # run in place

        def output(i: int, needle: str) -> str:
            out = cell(i).locator(".jp-OutputArea-output", has_text=needle).first
            out.wait_for()
            return str(cell(i).locator(".jp-OutputArea").inner_text())

        # 0: output from inside the sandbox.
        run(0)
        words = output(0, "SANDBOX release").split()
        release, uid, host, sock = words[2], words[4], words[6], words[8]
        assert release != os.uname().release, "kernel ran on the host kernel, not gVisor"
        assert (uid, sock) == ("1000", "False") and host != socket.gethostname(), words

        # 1: a matplotlib figure arrives as an <img> in the page.
        run(1)
        img = cell(1).locator(".jp-OutputArea-output img")
        img.wait_for()
        assert img.evaluate("e => e.naturalWidth") > 100

        # 2: input() answered in the browser.
        run(2)
        box = cell(2).locator(".jp-Stdin-input")
        box.wait_for()
        box.fill("sandbox tester")
        box.press("Enter")
        assert f"hello sandbox tester from {release}" in output(2, "hello")

        page.screenshot(path=str(SCREENSHOT))  # replaced at the end; kept if later steps fail

        # 3: interrupt a long sleep from the toolbar.
        run(3)
        output(3, "sleeping")
        wait_for(lambda: kernel().get("execution_state") == "busy", "the sleep to run")
        page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click()
        text = output(3, "KeyboardInterrupt")
        assert "NOT INTERRUPTED" not in text
        wait_for(idle, "idle after the interrupt")

        # Restart from the toolbar, confirm the dialog: a new sandbox, a fresh kernel.
        page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:restart-kernel"]').click()
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.locator(".jp-Dialog").wait_for(state="detached")
        wait_for(
            lambda: idle() and bool(before_restart - running_ids(lab, docker_client)),
            "the restarted kernel in a new sandbox (the old one removed)",
        )
        run(4)
        assert f"RESTARTED False {release} 1000" in output(4, "RESTARTED")
        run(5)
        readout = cell(5).locator(".widget-slider .widget-readout")
        readout.wait_for()
        assert readout.inner_text().strip() == "7"
        cell(5).locator(".noUi-handle").first.press("ArrowRight")  # keyboard, like a user
        wait_for(lambda: readout.inner_text().strip() == "8", "the slider to move")
        run(6)
        assert "SLIDER 8" in output(6, "SLIDER")
        page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


BOMB = "print('filling memory', flush=True)\nchunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))"
AFTER_BOMB = "import os, platform\nprint('BACK', platform.release(), os.getuid())"
MEMORY_SHOT = REPO / "test-artifacts" / "jupyterlab-memory-limit.png"


def test_student_sees_why_the_kernel_died(
    lab: JupyterServer, docker_client: docker.DockerClient
) -> None:
    """A memory bomb run in JupyterLab: under the cell the student reads that the sandboxed
    kernel hit its memory limit (not only JupyterLab's "the kernel appears to have died"),
    and the server's restarter brings the kernel back: the next cell runs, in a new
    sandbox. Screenshot: test-artifacts/jupyterlab-memory-limit.png.

    The server's own ``execution_state`` is not waited on: Jupyter Server tracks it from
    IOPub statuses seen by a subscriber of its own, which keeps the bomb's "busy" when it
    reconnects after the new kernel's first statuses (an auto-restart resets it only when
    the ports change, and ours are kept)."""
    MEMORY_SHOT.parent.mkdir(exist_ok=True)
    MEMORY_SHOT.unlink(missing_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "sandbox-small", "display_name": "Python 3 (sandboxed, 512m)", "language": "python",
    }  # fmt: skip
    nb.cells = [nbformat.v4.new_code_cell(BOMB), nbformat.v4.new_code_cell(AFTER_BOMB)]
    nbformat.write(nb, lab.root / "bomb.ipynb")

    idle = lab.kernel_idle

    with chromium_page(FAILURE_SHOT, 800, lab.log) as page:
        page.goto(f"{lab.url}/lab/tree/bomb.ipynb?token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        wait_for(idle, "the sandboxed kernel to be idle")
        first = running_ids(lab, docker_client)
        cell = page.locator(".jp-Notebook .jp-Cell").first
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        said = cell.locator(".jp-OutputArea-output", has_text="memory limit").first
        said.wait_for()
        text = cell.locator(".jp-OutputArea").inner_text()
        assert "filling memory" in text, text
        assert "The sandboxed kernel was stopped: it hit its memory limit (512m)" in text
        page.screenshot(path=str(MEMORY_SHOT))
        wait_for(lambda: bool(first - running_ids(lab, docker_client)), "the old sandbox to end")
        # What the student sees of the restart: JupyterLab's "appears to have died" dialog,
        # dismissed, then the notebook's kernel indicator idle again.
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.locator(".jp-Dialog").wait_for(state="detached")
        page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for()
        after = page.locator(".jp-Notebook .jp-Cell").nth(1)
        after.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        back = after.locator(".jp-OutputArea-output", has_text="BACK").first
        back.wait_for()
        words = back.inner_text().split()
        assert words[1] != os.uname().release and words[2] == "1000", words  # gVisor, sandbox user
