"""The warm pool's pre-started kernel, host side: its command and its connection
placeholder (pure). The same command starts a cold ipykernel (without ipykernel's
TCP warning, which is not true of a sandbox's loopback; see inside/prewarm_kernel.py).

A pooled sandbox runs ``inside/prewarm_kernel.py`` (a kernel initialised up to its key,
with a placeholder HMAC key nobody knows; nothing reaches its ports until the sandbox is
claimed). On claim the agent writes the real connection file and hands the kernel the
real key; it then serves exactly as ``python3 -m ipykernel_launcher ARGS`` would.
"""

from __future__ import annotations

import ast
import secrets
from importlib import resources
from typing import Any

from .inside.protocol import INSIDE_PORTS


def _bare(source: str) -> str:
    """``source`` without its docstrings and comments: it becomes the kernel's command line,
    which every process in the sandbox can read (and which the attack catalogue's
    info-process-list checks for names of host software)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and len(body) > 1
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            del body[0]
    return ast.unparse(tree) + "\n"


# The pooled kernel's program (a real module, so linters see it), sent as ``-c`` text.
PREWARM_CODE = _bare(
    resources.files("sandbox_kernel.inside")
    .joinpath("prewarm_kernel.py")
    .read_text(encoding="utf-8")
)


def prewarm_command(inside_argv: list[str]) -> list[str] | None:
    """For a kernel command ``[PYTHON, -m, ipykernel_launcher, ARGS...]`` (placeholders
    already substituted) the pool's command ``[PYTHON, -c, PREWARM_CODE, ARGS...]``, which
    also starts it cold; None for any other kernel."""
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
