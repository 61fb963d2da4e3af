"""The warm pool's kernel: initialised as far as it can be before it has an owner.

Run inside the sandbox as ``python3 -c <this file's text> ARGS`` (see
``sandbox_kernel/prewarm.py``), instead of ``python3 -m ipykernel_launcher ARGS``:
ipykernel imported, ``IPKernelApp.initialize()`` done (IPython shell, history, its
sockets bound on the sandbox's fixed inside ports, threads started) with a placeholder
HMAC key that nobody knows. It then waits on stdin for one JSON line,
``{"key", "signature_scheme", "env", "cwd"}``, takes the key and serves exactly as
``ipykernel_launcher`` would. Progress goes to the agent on the pipe named by
``SANDBOX_KERNEL_READY_FD``: ``i`` once initialised, ``k`` once it holds the real key.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # as `python -m` would not search the working directory first
    sys.argv[0] = "ipykernel_launcher"
    stdin = sys.stdin
    ready = int(os.environ.pop("SANDBOX_KERNEL_READY_FD"))
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize()  # type: ignore[no-untyped-call]
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
    app.start()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
