"""docs/examples: the single-user server config for untrusted users, run for real in
`jupyter server` (REST and the kernel websocket). Both recipes' JupyterHub configs are
loaded into their spawner classes in tests/unit/test_hub_setup.py; recipe (a) also runs
in a real JupyterHub: tests/integration/test_hub.py."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import docker
import pytest
from tornado.websocket import websocket_connect

from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import EXAMPLES
from tests.integration.servers import JupyterServer, ws_execute


@pytest.fixture
def server(tmp_path: Path, kernel_dirs: Path, docker_client: docker.DockerClient) -> Any:
    # A user-writable kernel folder (the server's data dir, like ~/.local/share/jupyter)
    # holding a "sandbox-python" that would run unsandboxed, on the host: it must lose.
    planted = tmp_path / "data" / "kernels" / "sandbox-python"
    planted.mkdir(parents=True)
    local = {**build_kernelspec({}), "display_name": "PLANTED", "metadata": {}}
    (planted / "kernel.json").write_text(json.dumps(local))
    # The example as is, but the admin kernel folder is the test's one.
    config = tmp_path / "jupyter_server_config.py"
    config.write_text(
        (EXAMPLES / "jupyter_server_config.py").read_text()
        + f"\nc.SandboxedOnlyKernelSpecManager.admin_kernel_dirs = [{str(kernel_dirs)!r}]\n"
        + "c.SandboxProvisioner.max_kernels = 1\n"  # the example's 4, cheaper to reach
    )
    # Search order as on a system-wide install (user data dir before the environment's,
    # not a venv's reverse) and JUPYTER_PATH empty: only the config's pin protects.
    (tmp_path / "empty").mkdir()
    srv = JupyterServer(
        "jupyter_server",
        tmp_path,
        tmp_path / "empty",
        extra_args=[f"--config={config}"],
        env={"JUPYTER_PREFER_ENV_PATH": "0"},
    )
    with srv.running(docker_client):
        yield srv


async def execute(srv: JupyterServer, kernel_id: str, code: str, timeout: float = 120) -> str:
    """Run code over the kernel's websocket, as JupyterLab does; return its stdout."""
    url = f"ws://127.0.0.1:{srv.port}/api/kernels/{kernel_id}/channels?token={srv.token}"
    ws = await websocket_connect(url)
    try:
        return await ws_execute(ws, code, "test", timeout)
    finally:
        ws.close()


def test_single_user_config_allows_only_sandboxed_kernels(server: JupyterServer) -> None:
    specs = server.api("GET", "/api/kernelspecs")
    assert set(specs["kernelspecs"]) == {"sandbox-python"}
    assert specs["default"] == "sandbox-python"
    chosen = specs["kernelspecs"]["sandbox-python"]["spec"]
    assert chosen["display_name"] == "Python 3 (sandboxed)", "the planted kernelspec won"
    assert chosen["metadata"]["kernel_provisioner"]["provisioner_name"] == "sandbox-provisioner"

    # No terminals: listing and creating one both meet a missing API (enabled, POST creates).
    assert server.status("/api/terminals") == 404
    with pytest.raises(Exception) as no_terminal:
        server.api("POST", "/api/terminals", {})
    assert getattr(no_terminal.value, "code", 0) == 404, no_terminal.value

    # A kernel by a name not listed (the built-in, unsandboxed "python3") is refused with a
    # 403 that says why, over both routes a client can use; nothing was started.
    for path, body in (
        ("/api/kernels", {"name": "python3"}),
        ("/api/sessions", {"path": "x.ipynb", "type": "notebook", "kernel": {"name": "python3"}}),
    ):
        code, reply = server.error("POST", path, body)
        assert code == 403, (path, code, reply)
        assert "'python3' is not allowed on this server" in reply["message"], reply
        assert "sandbox-python" in reply["message"], reply
    assert server.api("GET", "/api/kernels") == []

    # Hidden folders (config files, kernelspecs) cannot be written through the contents API.
    with pytest.raises(Exception) as hidden:
        server.api("PUT", "/api/contents/.jupyter/jupyter_server_config.py",
                   {"type": "file", "format": "text", "content": "c.ServerApp.terminals_enabled = True"})  # fmt: skip
    assert getattr(hidden.value, "code", 0) >= 400, hidden.value
    assert not (server.root / ".jupyter").exists()

    # The default kernel, started over REST, runs in the sandbox.
    kernel = server.api("POST", "/api/kernels", {})
    assert kernel["name"] == "sandbox-python"
    text = asyncio.run(
        execute(
            server,
            kernel["id"],
            "import os, platform, sandboxed\n"
            "try:\n    port = sandboxed.expose(8050)\n"
            "except sandboxed.SandboxRequestError:\n    port = 'refused'\n"
            f"print(platform.release(), os.getuid(), os.path.exists({str(server.root)!r}), port)",
        )
    )
    release, uid, sees_root, port = text.split()
    assert release != os.uname().release and (uid, sees_root) == ("1000", "False"), text
    assert port == "refused", text  # max_runtime_ports = 0

    # max_kernels: a second kernel is refused with a 403 that says why, by either route.
    for path, body in (
        ("/api/kernels", {}),
        (
            "/api/sessions",
            {"path": "y.ipynb", "type": "notebook", "kernel": {"name": "sandbox-python"}},
        ),
    ):
        code, reply = server.error("POST", path, body)
        assert code == 403 and "max_kernels=1" in reply["message"], (path, code, reply)
    # Changing a session's kernel to a name not allowed is refused too.
    session = server.api(
        "POST",
        "/api/sessions",
        {"path": "z.ipynb", "type": "notebook", "kernel": {"id": kernel["id"]}},
    )
    code, reply = server.error(
        "PATCH", f"/api/sessions/{session['id']}", {"kernel": {"name": "python3"}}
    )
    assert code == 403 and "not allowed" in reply["message"], (code, reply)
    # Left running: after the refused starts, the server must still shut down cleanly with a
    # live kernel (the fixture checks it exits 0 and leaves no sandbox).
    assert [k["id"] for k in server.api("GET", "/api/kernels")] == [kernel["id"]]


# Sends one request to the server's port, prints what came back: the status line, or how
# the connection ended (run as root and as another user).
KNOCK = r"""
import socket, sys
port, length = int(sys.argv[1]), int(sys.argv[2])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /api/contents/x.ipynb HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length)
    if length <= 65536:  # a large body is announced only: the answer must not wait for it
        s.sendall(b"{" * length)
    reply = s.recv(200)
    print(reply.split(b"\r\n")[0].decode() if reply else "CLOSED")
except (ConnectionResetError, BrokenPipeError):
    print("RESET")
"""


def test_the_servers_port_serves_only_its_own_user_and_root(server: JupyterServer) -> None:
    """Another local user's connection to the server's 127.0.0.1 port is reset before a
    byte of it is read (sandbox_kernel/server_peers.py); the owner's (here root) is served,
    and a body over max_body_size is refused from its headers (400), not read."""
    import subprocess
    import sys

    def knock(as_user: list[str], length: int) -> str:
        argv = [*as_user, sys.executable, "-c", KNOCK, str(server.port), str(length)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
        return done.stdout.strip() or done.stderr.strip()[-300:]

    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    assert knock([], 10).startswith("HTTP/1.1 403"), "the owner's request was not answered"
    assert knock(nobody, 10) == "RESET"
    assert knock(nobody, 450 * 2**20) == "RESET"
    assert knock([], 450 * 2**20).startswith("HTTP/1.1 400")  # over 64 MiB: not read
    assert server.api("GET", "/api/status")["started"]
