"""The warm pool's pre-started kernel (pure data: the code the agent runs, and its
connection placeholder).

A pooled sandbox runs a kernel that is initialised as far as it can be without
knowing whose kernel it will be: ipykernel imported, ``IPKernelApp.initialize()``
done (IPython shell, history, its sockets bound on the sandbox's fixed inside
ports, threads started) with a placeholder HMAC key that nobody knows; nothing
reaches those ports until the sandbox is claimed. On claim the agent writes the
real connection file and sends one JSON line, ``{"key", "signature_scheme", "env",
"cwd"}``; the kernel takes the key and starts serving, exactly as
``python3 -m ipykernel_launcher ARGS`` would from then on. It reports progress to the
agent on the pipe named by ``SANDBOX_KERNEL_READY_FD``: ``i`` when initialised (the
sandbox joins the pool), ``k`` when it holds the real key (the kernel has started).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..policy import INSIDE_PORTS

PREWARM_CODE = """\
import json, os, sys
if sys.path and sys.path[0] == "":
    del sys.path[0]  # as `python -m` would not search the working directory first
sys.argv[0] = "ipykernel_launcher"
stdin = sys.stdin
ready = int(os.environ.pop("SANDBOX_KERNEL_READY_FD"))
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
app.initialize()
os.write(ready, b"i")
line = stdin.readline()
if not line:
    os._exit(0)
spec = json.loads(line)
fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
os.environ.clear()
os.environ.update(spec["env"])
os.chdir(spec["cwd"])
app.session.signature_scheme = spec["signature_scheme"]
app.session.key = spec["key"].encode()
os.write(ready, b"k")
os.close(ready)
app.start()
"""


def prewarm_command(inside_argv: list[str]) -> list[str] | None:
    """For a kernel command ``[PYTHON, -m, ipykernel_launcher, ARGS...]`` (placeholders
    already substituted) the pool's command ``[PYTHON, -c, PREWARM_CODE, ARGS...]``; None
    for any other kernel (started cold)."""
    if len(inside_argv) >= 3 and inside_argv[1:3] == ["-m", "ipykernel_launcher"]:
        return [inside_argv[0], "-c", PREWARM_CODE, *inside_argv[3:]]
    return None


def placeholder_connection() -> dict[str, Any]:
    """Connection info for a pooled kernel: the fixed inside ports and a random key that
    is replaced on claim (so a pooled kernel answers nobody)."""
    return {
        **INSIDE_PORTS,
        "ip": "127.0.0.1",
        "transport": "tcp",
        "key": secrets.token_hex(32),
        "signature_scheme": "hmac-sha256",
        "kernel_name": "",
    }
