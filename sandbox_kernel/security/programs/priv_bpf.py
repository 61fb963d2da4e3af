import struct

from ._prelude import _os, _report  # inlined
from ._syscalls import _ctypes, _judge, _sys  # inlined

attr = _ctypes.create_string_buffer(struct.pack("IIII", 1, 4, 4, 1), 128)  # hash map
insns = _ctypes.create_string_buffer(b"\xb7" + b"\0" * 7 + b"\x95" + b"\0" * 7, 16)  # r0 = 0; exit
license = _ctypes.create_string_buffer(b"GPL")
prog = _ctypes.create_string_buffer(
    struct.pack("IIQQ", 1, 2, _ctypes.addressof(insns), _ctypes.addressof(license)), 128
)
results = {}
for name, cmd, arg in (("BPF_MAP_CREATE", 0, attr), ("BPF_PROG_LOAD", 5, prog)):
    results[name] = _sys("bpf", cmd, arg, 128)
    if results[name] == "OK":
        _os.close(_sys.last)
_report(*_judge(results, {"EPERM", "EACCES", "ENOSYS"}))
