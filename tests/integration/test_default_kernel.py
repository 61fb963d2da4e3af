"""A notebook from elsewhere names ``python3``: after the README's first command it runs in
the sandbox, whatever opens it (nbconvert, papermill, nbclient, jupyter_server's REST API,
JupyterLab in a browser), and never sees the file beside it.

These tests use the kernelspecs as quickstart.sh installed them (no JUPYTER_PATH of the
tests' own: an empty one, so nothing but the venv's, the user's and the system's
folders count), because that is what a user gets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import nbformat
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from sandbox_kernel.kernelspec import (
    DEFAULT_PROVISIONER_ENV,
    NOTEBOOK_DEFAULT_NAME,
    PROVISIONER_NAME,
)
from tests.integration.browser import chromium_page, wait_for
from tests.integration.servers import JupyterServer, ws_execute

BIN = Path(sys.executable).parent
# What ipykernel 7.4.0's wheel carries as share/jupyter/kernels/python3/kernel.json.
IPYKERNEL_WHEEL_SPEC = {
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "metadata": {"debugger": True, "supported_encryption": ["curve"]},
    "kernel_protocol_version": "5.5",
}
SECRET = "ANSWER-KEY-4242"
# Prints gVisor's kernel release and whether the file next to the notebook is readable.
PROBE = (
    "import os, platform\n"
    "try:\n"
    "    seen = open('answer_key.txt').read().strip()\n"
    "except OSError as exc:\n"
    "    seen = type(exc).__name__\n"
    "print('PROBE', platform.release(), seen)"
)


def downloaded_notebook(folder: Path) -> Path:
    """An assignment as found on the internet: metadata naming ``python3``, an answer key
    beside it."""
    (folder / "answer_key.txt").write_text(SECRET + "\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": NOTEBOOK_DEFAULT_NAME, "display_name": "Python 3 (ipykernel)", "language": "python",
    }  # fmt: skip
    nb.cells = [nbformat.v4.new_code_cell(PROBE)]
    path = folder / "assignment.ipynb"
    nbformat.write(nb, path)
    return path


def assert_sandboxed(output: str) -> None:
    words = output.split("PROBE", 1)[-1].split()
    assert len(words) >= 2, output
    release, seen = words[0], words[1]
    assert release != os.uname().release, f"ran on the host kernel: {output}"
    assert SECRET not in output and seen == "FileNotFoundError", output


def outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture
def as_installed(tmp_path: Path) -> dict[str, str]:
    """The environment of a user after quickstart.sh: only the installed kernelspecs."""
    empty = tmp_path / "no-extra-kernels"
    empty.mkdir()
    return {**os.environ, "JUPYTER_PATH": str(empty)}


def test_python3_resolves_to_the_sandbox(as_installed: dict[str, str]) -> None:
    out = subprocess.run(
        [str(BIN / "jupyter"), "kernelspec", "list", "--json"],
        env=as_installed, capture_output=True, text=True, check=True,
    )  # fmt: skip
    spec = json.loads(out.stdout)["kernelspecs"][NOTEBOOK_DEFAULT_NAME]["spec"]
    provisioner = spec["metadata"].get("kernel_provisioner", {})
    assert provisioner.get("provisioner_name") == PROVISIONER_NAME, spec


@pytest.fixture
def after_ipykernel_upgrade(tmp_path: Path, as_installed: dict[str, str]) -> dict[str, str]:
    """As installed, then ``pip install -U ipykernel``: its wheel's own python3 spec (no
    provisioner, ``python`` on PATH) is what Jupyter resolves ``python3`` to. Placed first
    in JUPYTER_PATH rather than over the venv's file, which other tests use; resolved the
    same way. The variable the venv's ``.pth`` sets is removed from the environment, so
    only that file can set it."""
    kernels = Path(as_installed["JUPYTER_PATH"]) / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps(IPYKERNEL_WHEEL_SPEC))
    return {k: v for k, v in as_installed.items() if k != DEFAULT_PROVISIONER_ENV}


@pytest.mark.parametrize("tool", ["nbconvert", "papermill", "nbclient"])
@pytest.mark.parametrize("setup", ["as_installed", "after_ipykernel_upgrade"])
def test_downloaded_notebook_runs_sandboxed(
    tool: str, setup: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Also after ipykernel's wheel rewrote python3 (an upgrade of ipykernel, or of
    JupyterLab pulling a new one): the spec names no provisioner, and in this
    environment that means the sandbox (kernelspec.install_sandbox_default)."""
    env: dict[str, str] = request.getfixturevalue(setup)
    notebook = downloaded_notebook(tmp_path)
    out = tmp_path / "out.ipynb"
    commands = {
        "nbconvert": [str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                      "--output", str(out), str(notebook)],
        "papermill": [str(BIN / "papermill"), str(notebook), str(out)],
        "nbclient": [sys.executable, "-c",
                     "import sys, nbformat; from nbclient import NotebookClient\n"
                     "nb = nbformat.read(sys.argv[1], as_version=4)\n"
                     "NotebookClient(nb, resources={'metadata': {'path': sys.argv[3]}}).execute()\n"
                     "nbformat.write(nb, sys.argv[2])",
                     str(notebook), str(out), str(tmp_path)],
    }  # fmt: skip
    r = subprocess.run(
        commands[tool], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert_sandboxed(outputs(out))


@pytest.fixture
def server(
    tmp_path: Path, as_installed: dict[str, str], docker_client: docker.DockerClient
) -> Iterator[JupyterServer]:
    srv = JupyterServer(
        "jupyterlab", tmp_path, Path(as_installed["JUPYTER_PATH"]), env=as_installed
    )
    downloaded_notebook(srv.root)
    with srv.running(docker_client):
        yield srv


def test_rest_api_session_for_python3_is_sandboxed(server: JupyterServer) -> None:
    session = server.api(
        "POST", "/api/sessions",
        {"path": "assignment.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
        timeout=180,
    )  # fmt: skip

    async def probe() -> str:
        kernel = session["kernel"]["id"]
        url = server.url.replace("http", "ws") + f"/api/kernels/{kernel}/channels"
        req = HTTPRequest(url, headers={"Authorization": f"token {server.token}"})
        ws = await websocket_connect(req)
        try:
            return await ws_execute(ws, PROBE, "student", timeout=120)
        finally:
            ws.close()

    assert_sandboxed(asyncio.run(probe()))


def test_jupyterlab_opens_python3_notebook_in_the_sandbox(server: JupyterServer) -> None:
    with chromium_page(server.workdir / "failure.png", log=server.log) as page:
        page.goto(f"{server.url}/lab/tree/assignment.ipynb?token={server.token}")
        cell = page.locator(".jp-Notebook .jp-Cell").first
        cell.wait_for()
        wait_for(server.kernel_idle, "the notebook's kernel to be idle")
        toolbar_kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")
        assert "sandboxed" in toolbar_kernel.inner_text(), toolbar_kernel.inner_text()
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        out = cell.locator(".jp-OutputArea-output", has_text="PROBE").first
        out.wait_for()
        assert_sandboxed(out.inner_text())
