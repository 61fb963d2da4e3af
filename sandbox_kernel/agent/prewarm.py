"""The warm pool's stand-in kernel process (pure data: the code the agent runs).

It imports ipykernel (the slow part of a kernel start) before any kernel is asked
for, then waits on stdin for one JSON line, ``{"argv", "env", "cwd"}``, sent by the
agent when a kernel claims the sandbox, and becomes that kernel exactly as
``python3 -m ipykernel_launcher ARGS`` would.
"""

from __future__ import annotations

PREWARM_CODE = """\
import json, os, sys
if sys.path and sys.path[0] == "":
    del sys.path[0]  # as `python -m` would not search the working directory first
from ipykernel import kernelapp
line = sys.stdin.readline()
if not line:
    sys.exit(0)
spec = json.loads(line)
fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
os.environ.clear()
os.environ.update(spec["env"])
os.chdir(spec["cwd"])
sys.argv = spec["argv"]
kernelapp.launch_new_instance()
"""


def split_for_prewarm(kernel_argv: list[str]) -> tuple[list[str], list[str]] | None:
    """For a kernel argv ``[PYTHON, -m, ipykernel_launcher, ARGS...]`` return the command
    that pre-warms (``[PYTHON, -c, PREWARM_CODE]``) and the ``sys.argv`` the kernel gets
    (``[ipykernel_launcher, ARGS...]``); None for any other kernel (started cold)."""
    if len(kernel_argv) >= 3 and kernel_argv[1:3] == ["-m", "ipykernel_launcher"]:
        return [kernel_argv[0], "-c", PREWARM_CODE], ["ipykernel_launcher", *kernel_argv[3:]]
    return None
