from ._ns_child import _new_ns_in_child  # inlined
from ._prelude import _report  # inlined

FLAGS = {
    "mnt": 0x00020000,
    "net": 0x40000000,
    "pid": 0x20000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "cgroup": 0x02000000,
}
seen = {}
for name, flag in FLAGS.items():
    seen["unshare " + name] = _new_ns_in_child(flag)
    seen["clone " + name] = _new_ns_in_child(flag, "clone")
ok = all(v in ("EPERM", "EINVAL", "EACCES", "ENOSYS", "OK-NOOP") for v in seen.values())
_report(ok, seen)
