"""How an ipykernel starts in a sandbox: cold, or as the warm pool's kernel, initialised
as far as it can be before it has an owner.

Run inside the sandbox as ``python3 -c <this file's text> ARGS`` (see
``sandbox_kernel/prewarm.py``), instead of ``python3 -m ipykernel_launcher ARGS``. Both
ways, ipykernel's "Kernel is running over TCP without encryption" warning is dropped (and
no other log line): the kernel's TCP ports are the sandbox's own loopback, which nothing
but the agent reaches, so the warning is not true of it and only hides real messages.
And ipykernel 7's shutdown is put in order (:func:`reply_before_closing`): a busy kernel
asked to shut down printed ``zmq.error.ZMQError: Socket operation on non-socket``.

Without ``SANDBOX_KERNEL_READY_FD`` in its environment (a cold start) it then serves
exactly as ``ipykernel_launcher`` would. With it (the warm pool):
ipykernel imported, ``IPKernelApp.initialize()`` done (IPython shell, history, its
sockets bound on the sandbox's fixed inside ports, threads started) with a placeholder
HMAC key that nobody knows. It then waits on stdin for one JSON line,
``{"key", "signature_scheme", "env", "cwd"}``, takes the key and serves exactly as
``ipykernel_launcher`` would. Progress goes to the agent on the pipe named by
``SANDBOX_KERNEL_READY_FD``: ``i`` once initialised, ``k`` once it holds the real key.

At the claim, before it takes the key, it renews what every copy of one snapshot would
share (the warm pool may restore many sandboxes from one checkpoint of this process;
see pool.py): Python's ``random`` generator (numpy's global one too, if imported), the
session id that prefixes every message id, and the kernel's id in its IOPub topics. The
HMAC key is the claim's own anyway, and the OS's randomness (``os.urandom``, ``secrets``)
is drawn anew by each sandbox. What cannot be renewed in a running process (the string
hash seed, the address-space layout and with it the stack canary) is bounded by the
pool's re-snapshots; docs/security.md says why it gives one user nothing against another.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import uuid
from typing import Any


def renew(app: Any) -> None:
    """Give this kernel state of its own, whatever copies of it a snapshot made."""
    random.seed()  # from os.urandom
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()  # the legacy global RandomState, from the OS too
    app.session.session = str(uuid.uuid4())  # msg ids: "<session>_<pid>_<n>"
    app.kernel.ident = str(uuid.uuid4())  # IOPub topics: "kernel.<ident>.<topic>"


class NoTcpWarning(logging.Filter):
    """Drops ipykernel's warning that its TCP ports are unencrypted (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "running over TCP without encryption" not in str(record.msg)


def reply_before_closing(app: Any) -> threading.Event:
    """Keep ipykernel 7's shell channel thread running until the main thread is done.

    jupyter_client interrupts a kernel before it asks it to shut down. A cell that was
    running then ends (KeyboardInterrupt) and the main thread sends its execute_reply
    through its inproc socket to the shell channel thread, while the control thread's
    ``shutdown_request`` has already stopped that thread's loop, whose exit closes the
    inproc sockets, the main thread's end included: the reply fails with ENOTSOCK
    ("Socket operation on non-socket", a traceback on the kernel's console). Here a stop
    of that loop waits until the main thread's loop has ended (``main`` sets the event it
    returns); ``IPKernelApp.close`` (at exit) then stops and joins the thread as before."""
    main_done = threading.Event()
    thread = getattr(app, "shell_channel_thread", None)
    if thread is None:  # ipykernel < 7: one thread serves the shell
        return main_done
    loop = thread.io_loop
    stop = loop.stop

    def stop_after_main() -> None:
        if main_done.is_set():  # else asked by shutdown_request: close() stops it at exit
            stop()

    loop.stop = stop_after_main
    return main_done


def serve(app: Any, main_done: threading.Event) -> None:
    try:
        app.start()
    finally:
        main_done.set()


def main() -> None:
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # as `python -m` would not search the working directory first
    sys.argv[0] = "ipykernel_launcher"
    stdin = sys.stdin
    ready_fd = os.environ.pop("SANDBOX_KERNEL_READY_FD", None)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.log.addFilter(NoTcpWarning())  # the app's own logger: kept when it is configured
    app.initialize()  # type: ignore[no-untyped-call]
    main_done = reply_before_closing(app)
    if ready_fd is None:  # a cold start: serve now
        serve(app, main_done)
        return
    ready = int(ready_fd)
    os.write(ready, b"i")
    line = stdin.readline()
    if not line:
        os._exit(0)
    spec = json.loads(line)
    renew(app)
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
    serve(app, main_done)


if __name__ == "__main__":
    main()
