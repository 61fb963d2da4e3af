import ctypes

from ._prelude import _en, _os, _read, _report  # inlined
from ._syscalls import _call, _judge, _libc, _sys  # inlined

PTRACE_ATTACH, PTRACE_DETACH = 16, 17
_libc.ptrace.restype = ctypes.c_long


class _Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


results = {}
# The agent is the kernel's parent: PID 1, except under firejail, whose init is PID 1.
for pid in sorted({1, _os.getppid()}):
    results["ptrace(ATTACH, %d)" % pid] = _call("ptrace", PTRACE_ATTACH, pid, None, None)
    if results["ptrace(ATTACH, %d)" % pid] == "OK":
        _call("ptrace", PTRACE_DETACH, pid, None, None)
    addr = 0x400000
    try:
        addr = int(_read("/proc/%d/maps" % pid).split("-", 1)[0], 16)
    except (OSError, ValueError):
        pass
    buf = ctypes.create_string_buffer(16)
    local, remote = _Iov(ctypes.addressof(buf), 16), _Iov(addr, 16)
    results["process_vm_readv(%d)" % pid] = _sys(
        "process_vm_readv", pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0
    )
    try:
        with open("/proc/%d/mem" % pid, "rb") as f:
            f.seek(addr)
            f.read(16)
        results["read /proc/%d/mem" % pid] = "OK"
    except OSError as e:
        results["read /proc/%d/mem" % pid] = _en(e.errno)
_report(*_judge(results, {"EPERM", "EACCES"}))
