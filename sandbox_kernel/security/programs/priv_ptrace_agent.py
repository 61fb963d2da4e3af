import ctypes

from ._prelude import _en, _read, _report  # inlined
from ._syscalls import _call, _judge, _libc, _sys  # inlined

PTRACE_ATTACH, PTRACE_DETACH = 16, 17
_libc.ptrace.restype = ctypes.c_long
results = {"ptrace(ATTACH, 1)": _call("ptrace", PTRACE_ATTACH, 1, None, None)}
if results["ptrace(ATTACH, 1)"] == "OK":
    _call("ptrace", PTRACE_DETACH, 1, None, None)
addr = 0x400000
try:
    addr = int(_read("/proc/1/maps").split("-", 1)[0], 16)
except (OSError, ValueError):
    pass


class _Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


buf = ctypes.create_string_buffer(16)
local, remote = _Iov(ctypes.addressof(buf), 16), _Iov(addr, 16)
results["process_vm_readv(1)"] = _sys(
    "process_vm_readv", 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0
)
try:
    with open("/proc/1/mem", "rb") as f:
        f.seek(addr)
        f.read(16)
    results["read /proc/1/mem"] = "OK"
except OSError as e:
    results["read /proc/1/mem"] = _en(e.errno)
_report(*_judge(results, {"EPERM", "EACCES"}))
