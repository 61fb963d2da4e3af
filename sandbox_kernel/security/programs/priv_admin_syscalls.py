import time

from ._prelude import _en, _os, _report  # inlined
from ._syscalls import _judge, _sys  # inlined

LINUX_REBOOT_CMD_CAD_OFF = 0  # harmless even if it were allowed
results = {
    "reboot": _sys("reboot", 0xFEE1DEAD, 672274793, LINUX_REBOOT_CMD_CAD_OFF, None),
    "kexec_load": _sys("kexec_load", 0, 0, None, 0),
    "swapon": _sys("swapon", b"/tmp/.sk-no-swap", 0),
    "pivot_root": _sys("pivot_root", b"/tmp", b"/tmp"),
    "sethostname": _sys("sethostname", b"sk-probe", 8),
    "acct": _sys("acct", None),
    "iopl": _sys("iopl", 3),
    "ioperm": _sys("ioperm", 0x80, 1, 1),
}
try:
    fd = _os.open("/proc/self/ns/net", _os.O_RDONLY)
except OSError:
    pass
else:
    try:
        results["setns(own net)"] = _sys("setns", fd, 0)
    finally:
        _os.close(fd)
try:
    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
    results["clock_settime"] = "OK"
except OSError as e:
    results["clock_settime"] = _en(e.errno)
_report(*_judge(results, {"EPERM", "EACCES"}))
