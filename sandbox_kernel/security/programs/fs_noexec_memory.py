import platform
import shutil
import subprocess
import sys
import uuid

from ._prelude import _en, _err, _os, _read, _report  # inlined
from .children import fs_noexec_memory as CHILD  # embedded

token = "sk-memfd-%s" % uuid.uuid4().hex
seen = {}
try:
    fd = _os.memfd_create("sk-probe")
except (OSError, AttributeError) as e:
    seen["memfd_create"] = _err(e)
else:
    try:
        data = _read(_os.path.realpath(shutil.which("echo") or "/bin/echo"), "rb")
        while data:
            data = data[_os.write(fd, data) :]
        r = subprocess.run(
            ["/proc/%d/fd/%d" % (_os.getpid(), fd), token],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        seen["execve of a memfd"] = (
            "EXECUTED" if token in r.stdout else ("refused (%d)" % r.returncode)
        )
    except OSError as e:
        seen["execve of a memfd"] = _en(e.errno)
    finally:
        _os.close(fd)
# "mov $42, %eax; ret" (x86_64), "mov w0, #42; ret" (aarch64), run in a child so that
# a refusal (SIGSEGV) cannot take the kernel down.
CODE = {"x86_64": "b82a000000c3", "aarch64": "40058052c0035fd6"}.get(platform.machine())
if CODE:
    child = "CODE = %r\n" % CODE + CHILD
    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", child],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    seen["anonymous executable memory"] = (
        "EXECUTED"
        if r.stdout.strip() == "42"
        else ("refused (%d): %s" % (r.returncode, r.stderr.strip()[-60:]))
    )
_report(bool(seen) and "EXECUTED" not in seen.values(), seen)
