import struct

from ._prelude import _os, _report  # inlined
from ._syscalls import _ctypes, _judge, _sys  # inlined

handle = _ctypes.create_string_buffer(8 + 128)
_ctypes.memmove(handle, struct.pack("I", 128), 4)
mount_id = _ctypes.c_int(0)
got = _sys("name_to_handle_at", -100, b"/", handle, _ctypes.byref(mount_id), 0)
if got != "OK":  # craft the classic handle: ext4 root inode 2
    _ctypes.memmove(handle, struct.pack("IiQ", 8, 1, 2), 16)
fd = _os.open("/", _os.O_RDONLY)
try:
    results = {"open_by_handle_at": _sys("open_by_handle_at", fd, handle, 0)}
    if results["open_by_handle_at"] == "OK":
        _os.close(_sys.last)
finally:
    _os.close(fd)
ok, detail = _judge(results, {"EPERM", "EACCES", "ENOSYS", "EOPNOTSUPP", "ENOTSUP"})
_report(ok, "%s (name_to_handle_at: %s)" % (detail, got))
