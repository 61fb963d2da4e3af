"""A real Jupyter server (JupyterLab or jupyter_server) as a subprocess on 127.0.0.1, for
the browser and deployment-config tests; its sandboxes are checked gone after it exits."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
from tornado.websocket import WebSocketClientConnection

from sandbox_kernel.backends.owner import LABEL_MANAGED, LABEL_SERVER_PID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sandboxes_of(client: docker.DockerClient, pid: int) -> list[Any]:
    """Sandbox containers (kernels and warm pool) that the process ``pid`` created."""
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_SERVER_PID}={pid}"]
    # sparse: one list call, no inspect per container, which fails (404) when a container
    # goes away between the two (other tests' sandboxes come and go all the time).
    return client.containers.list(all=True, sparse=True, filters={"label": labels})  # type: ignore[no-any-return]


def names(containers: list[Any]) -> list[str]:
    return [(c.attrs.get("Names") or [c.id])[0].lstrip("/") for c in containers]


def assert_none_left(client: docker.DockerClient, pid: int, what: str, settle: float = 30) -> None:
    """After ``pid`` exited: all its sandboxes gone (a removal may lag a moment); any left
    are removed so other tests are not disturbed, and the test fails."""
    deadline = time.monotonic() + settle
    while left := sandboxes_of(client, pid):
        if time.monotonic() > deadline:
            for c in left:
                try:
                    c.remove(force=True)
                except docker.errors.NotFound:
                    pass
            raise AssertionError(f"{what} left sandboxes: {names(left)}")
        time.sleep(0.5)


class JupyterServer:
    """``python -m <module>`` (jupyterlab or jupyter_server) with a token, a temp root dir,
    private config/data/runtime dirs, and kernelspecs found through JUPYTER_PATH."""

    def __init__(
        self,
        module: str,
        workdir: Path,
        jupyter_path: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.workdir = workdir
        self.root = workdir / "root"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        for name in ("root", "config", "data", "runtime"):
            (workdir / name).mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "JUPYTER_PATH": str(jupyter_path),
            # Private dirs: the user's own Jupyter config and state play no part.
            "JUPYTER_CONFIG_DIR": str(workdir / "config"),
            "JUPYTER_DATA_DIR": str(workdir / "data"),
            "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            **(env or {}),
        }
        self.args = [
            sys.executable, "-m", module,
            "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}", *(extra_args or []),
        ]  # fmt: skip
        if os.getuid() == 0:  # CI runs as root; the server's own refusal is not under test
            self.args.append("--allow-root")
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited early:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    self.proc.kill()  # don't leave a half-started server behind
                    self.proc.wait()
                    raise AssertionError(f"{self.module} did not answer:\n{self.log()}") from None
                time.sleep(0.3)

    def stop(self, timeout: float = 90) -> None:
        """Shut down like a user would (kernels first, via the REST API), then wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.api("POST", "/api/shutdown")
        except (OSError, urllib.error.URLError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.module} did not exit on shutdown:\n{self.log()}") from None
        assert self.proc.returncode == 0, (
            f"{self.module} exited with {self.proc.returncode}:\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def sandboxes(self, client: docker.DockerClient) -> list[Any]:
        assert self.proc is not None
        return sandboxes_of(client, self.proc.pid)

    @contextmanager
    def running(self, client: docker.DockerClient) -> Iterator[JupyterServer]:
        """Started; on leaving, stopped as a user would, and (even if it did not exit
        cleanly) none of its sandboxes may outlive it."""
        self.start()
        try:
            yield self
        finally:
            try:
                self.stop()
            finally:
                self.assert_no_sandboxes_left(client)

    def assert_no_sandboxes_left(self, client: docker.DockerClient) -> None:
        assert self.proc is not None
        try:
            assert_none_left(client, self.proc.pid, self.module)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    # -- REST -----------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def session_kernel(self) -> dict[str, Any]:
        """The kernel of the server's one notebook session, as the server reports it ({}
        until the session exists)."""
        sessions = self.api("GET", "/api/sessions")
        assert len(sessions) <= 1, sessions
        return sessions[0]["kernel"] if sessions else {}

    def kernel_idle(self) -> bool:
        return bool(self.session_kernel().get("execution_state") == "idle")

    def error(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON reply) of a request that must fail."""
        try:
            reply = self.api(method, path, body)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return int(exc.code), json.loads(raw)
            except ValueError:
                return int(exc.code), {"message": raw.decode(errors="replace")}
        raise AssertionError(f"{method} {path} succeeded: {reply}")

    def status(self, path: str) -> int:
        """HTTP status of an authenticated GET (errors included)."""
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"token {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


async def ws_execute(
    ws: WebSocketClientConnection, code: str, username: str, timeout: float
) -> str:
    """Run ``code`` over a kernel's open websocket, as JupyterLab does; return its stdout
    (and any traceback) once the kernel is idle again. The caller closes ``ws``."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": username,
              "session": uuid.uuid4().hex, "version": "5.3", "date": ""}  # fmt: skip
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    await ws.write_message(json.dumps({
        "header": header, "parent_header": {}, "metadata": {}, "content": content,
        "channel": "shell", "buffers": [],
    }))  # fmt: skip
    out: list[str] = []
    while True:
        raw = await asyncio.wait_for(ws.read_message(), timeout)
        assert raw is not None, "kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            out.append("\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
