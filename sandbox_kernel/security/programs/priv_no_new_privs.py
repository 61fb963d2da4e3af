import ctypes
import subprocess
import sys

from ._prelude import _report  # inlined

PR_GET_NO_NEW_PRIVS = 39
here = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
child = subprocess.run(
    [
        sys.executable,
        "-I",
        "-S",
        "-c",
        "import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))",
    ],
    capture_output=True,
    text=True,
    timeout=60,
    stdin=subprocess.DEVNULL,
).stdout.strip()
_report(here == 1 and child == "1", "kernel: %s, child process: %s" % (here, child))
