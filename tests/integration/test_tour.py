"""notebooks/tour.ipynb executed with nbclient in the sandboxed kernel: what works works,
and every escape attempt (cells tagged ``sandbox-stop``) printed BLOCKED, none ESCAPED.
The executed notebook is saved as test-artifacts/tour.out.ipynb."""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

from tests.helpers import REPO

TOUR = REPO / "notebooks" / "tour.ipynb"
OUT = REPO / "test-artifacts" / "tour.out.ipynb"

# Every attempt in the tour, by the name it prints: a missing line fails the test too.
EXPECTED_BLOCKS = {
    "host files",
    "list the host Docker state /var/lib/docker",
    "read the Docker daemon config",
    "connect to /var/run/docker.sock",
    "network interfaces",
    "UDP route to 192.0.2.1",
    "TCP to the Docker host gateway 172.17.0.1:22",
    "read-only root",
    "write /usr/lib/evil.so",
    "replace /etc/passwd",
    "raw ICMP socket",
    "packet socket (sniffing)",
    "become root with setuid(0)",
    "capabilities",
    "new user namespace (unshare)",
    "mount a filesystem",
    "fork bomb",
    "memory",
}


def text_of(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_tour_notebook(ksm: KernelSpecManager, docker_client: Any) -> None:
    nb = nbformat.read(TOUR, as_version=4)
    km = AsyncKernelManager(kernel_name="sandbox-python", kernel_spec_manager=ksm)
    try:
        NotebookClient(nb, km=km, timeout=180, allow_errors=False).execute()
    finally:  # nbclient leaves a kernel manager it was given running
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
    OUT.parent.mkdir(exist_ok=True)
    nbformat.write(nb, OUT)

    code = [c for c in nb.cells if c.cell_type == "code"]
    everything = "".join(text_of(c) for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "ESCAPED" not in everything, everything

    # What works: inside gVisor, numpy, a figure, a widget (its output kept in its state).
    assert f"kernel release : {os.uname().release}" not in everything
    assert re.search(r"kernel release : \S+ \(gVisor", everything)
    assert re.search(r"Monte Carlo pi: 3\.1\d\d", everything)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        for c in code
        for o in c.outputs
    )
    assert "H(5) = 2.2833" in json.dumps(nb.metadata["widgets"])

    # What it stops: every tagged cell blocked something, and every attempt was made.
    stops = [c for c in code if "sandbox-stop" in c.metadata.get("tags", [])]
    assert len(stops) == 8
    for c in stops:
        assert "BLOCKED: " in text_of(c), c.source
    blocked = dict(
        line[len("BLOCKED: ") :].split(": ", 1)
        for line in everything.splitlines()
        if line.startswith("BLOCKED: ")
    )
    assert set(blocked) == EXPECTED_BLOCKS, blocked
    # The lines that state a fact are checked against the host's side of it.
    own = re.fullmatch(r"/etc/hostname here is the sandbox's own \('(.*)'\)", blocked["host files"])
    assert own and own.group(1) != socket.gethostname(), blocked["host files"]
    mem = re.match(r"the sandbox has MemTotal (\d+) MiB", blocked["memory"])
    assert mem and int(mem.group(1)) == 2048, blocked["memory"]  # the cap (2g), not host RAM
    assert re.match(r"EAGAIN after \d+ processes \(RLIMIT_NPROC 64\)", blocked["fork bomb"])
    for what in ("UDP route to 192.0.2.1", "TCP to the Docker host gateway 172.17.0.1:22"):
        assert blocked[what].startswith(("ENETUNREACH", "EHOSTUNREACH")), blocked[what]
    assert "a subprocess allocated 256 MiB" in everything
