"""``sandboxed``: what code in a sandbox-kernel sandbox may ask of the host.

The agent installs this module (standard library only) on the kernel's
``PYTHONPATH``; in a notebook::

    import sandboxed
    url = sandboxed.expose(8050)       # a server on the sandbox's loopback, seen by the
                                       # host at http://127.0.0.1:<port>/ (host only)
    sandboxed.ports()                  # {8050: 49321, ...}: every exposed port
    sandboxed.export("results.csv")    # copy a file to the notebook's folder on the host
                                       # (as sandbox-exports/results.csv; never overwrites)

Each request goes to the agent (PID 1 of the sandbox) over a unix socket and from
there to the host, which decides: the operator's limits apply (``max_runtime_ports``,
``export_limit``), and nothing is ever opened from the sandbox towards the host.
"""

from __future__ import annotations

import array
import json
import os
import socket
import stat
from typing import Any

SOCKET_PATH = os.environ.get("SANDBOX_KERNEL_AGENT_SOCKET", "/tmp/.sandbox-agent/agent.sock")
__all__ = ["SandboxRequestError", "export", "expose", "ports"]


class SandboxRequestError(RuntimeError):
    """The host refused a request (a limit, a bad name) or the agent is unreachable."""


def _ask(request: dict[str, Any], timeout: float = 120.0, fd: int = -1) -> dict[str, Any]:
    """One request to the agent (with ``fd``, an open file, passed along); its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(SOCKET_PATH)
        except OSError as exc:
            raise SandboxRequestError(
                "the sandbox agent is not reachable at %s (%s): is this a sandbox-kernel "
                "sandbox?" % (SOCKET_PATH, exc)
            ) from None
        data = json.dumps(request).encode() + b"\n"
        if fd >= 0:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            sent = sock.sendmsg([data], rights)
            data = data[sent:]
        sock.sendall(data)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    try:
        answer = json.loads(data.decode())
    except ValueError:
        raise SandboxRequestError("no answer from the sandbox agent") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        answer = answer if isinstance(answer, dict) else {}
        raise SandboxRequestError(str(answer.get("error") or "refused"))
    return answer


def expose(port: int) -> str:
    """Make the server on this sandbox's 127.0.0.1:``port`` reachable from the host's
    127.0.0.1 (only); return its URL there. Asking again returns the same URL."""
    answer = _ask({"op": "expose", "port": int(port)})
    return "http://127.0.0.1:%d/" % int(answer["host_port"])


def ports() -> dict[int, int]:
    """Sandbox port -> host 127.0.0.1 port, for every exposed port."""
    answer = _ask({"op": "ports"})
    return {int(k): int(v) for k, v in answer["ports"].items()}


def export(path: str | os.PathLike[str], name: str | None = None) -> str:
    """Copy the file at ``path`` to the host, into the notebook's folder (sub-folder
    ``sandbox-exports`` by default), as ``name`` (default: its base name); an existing
    file is never replaced (a number is added). Returns the path on the host, relative
    to the notebook's folder."""
    full = os.path.abspath(os.fspath(path))
    # Opened here, with the kernel's own rights; the agent only reads what it is handed.
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SandboxRequestError("cannot read %s: %s" % (full, exc.strerror)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandboxRequestError("%s is not a regular file" % full)
        answer = _ask({"op": "export", "name": name or os.path.basename(full)}, fd=fd)
    finally:
        os.close(fd)
    return str(answer["path"])
