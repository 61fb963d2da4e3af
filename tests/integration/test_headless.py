"""Headless execution with the sandboxed kernel: nbconvert, papermill, nbclient, and
`sandbox-kernel ps` while a kernel runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import nbformat
import pytest

from tests.helpers import listed


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "sandbox-python", "display_name": "Python 3 (sandboxed)", "language": "python",
    }  # fmt: skip
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("factor = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, platform, numpy as np\n"
            "print(platform.release(), os.getuid(), int(np.arange(5).sum()) * factor)"
        ),
    ]
    path = tmp_path / "in.ipynb"
    nbformat.write(nb, path)
    return path


def jupyter_env(kernel_dirs: Path) -> dict[str, str]:
    # kernel_dirs is <tmp>/kernels: Jupyter looks for <path>/kernels.
    return {**os.environ, "JUPYTER_PATH": str(kernel_dirs.parent)}


def assert_sandboxed(text: str, result: str) -> None:
    """gVisor's kernel release (not the host's), uid 1000, and the computed result."""
    release, uid, value = text.split()
    assert release != os.uname().release and uid == "1000" and value == result


def last_stream(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")


def test_nbconvert_execute(
    notebook: Path, kernel_dirs: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    out = tmp_path / "out.ipynb"
    r = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.kernel_name=sandbox-python", "--output", str(out), str(notebook)],
        capture_output=True, text=True, timeout=300, env=jupyter_env(kernel_dirs),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert_sandboxed(last_stream(out), "20")


def test_papermill_with_parameters(
    notebook: Path, kernel_dirs: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    out = tmp_path / "pm.ipynb"
    r = subprocess.run(
        [sys.executable, "-m", "papermill", "-k", "sandbox-python", "-p", "factor", "3",
         str(notebook), str(out)],
        capture_output=True, text=True, timeout=300, env=jupyter_env(kernel_dirs),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert_sandboxed(last_stream(out), "30")


def test_nbclient_in_process(notebook: Path, ksm, docker_client) -> None:  # type: ignore[no-untyped-def]
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="sandbox-python", kernel_spec_manager=ksm)
    try:
        NotebookClient(nb, km=km, timeout=120).execute()
    finally:  # nbclient leaves a kernel manager it was given running
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert_sandboxed(text, "20")


def test_ps_lists_a_running_kernel(start_kernel) -> None:  # type: ignore[no-untyped-def]
    kernel = start_kernel()
    rows = {row["id"]: row for row in listed()}
    row = rows[kernel.sandbox_id[:12]]
    assert row["memory_mib"] > 10 and row["uptime_s"] >= 0
