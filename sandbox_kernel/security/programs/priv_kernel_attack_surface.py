import struct

from ._prelude import _os, _report  # inlined
from ._syscalls import _ctypes, _judge, _sys  # inlined

perf = _ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0), 128)  # sw cpu-clock
params = _ctypes.create_string_buffer(120)
results = {}
for name, args in (
    ("perf_event_open", (perf, 0, -1, -1, 0)),
    ("userfaultfd", (0,)),
    ("io_uring_setup", (1, params)),
):
    results[name] = _sys(name, *args)
    if results[name] == "OK":
        _os.close(_sys.last)
_report(*_judge(results, {"EPERM", "EACCES", "ENOSYS", "ENODEV", "ENOENT"}))
