import glob
import uuid

from ._prelude import _en, _errno, _os, _report  # inlined

NAMES = (
    "release_agent",
    "notify_on_release",
    "cgroup.procs",
    "tasks",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.max",
    "pids.max",
    "cpu.cfs_quota_us",
    "cpu.max",
    "cpu.shares",
    "devices.allow",
    "cgroup.subtree_control",
)
seen = {}
for d in ["/sys/fs/cgroup", *sorted(glob.glob("/sys/fs/cgroup/*/"))]:
    d = d.rstrip("/")
    for name in NAMES:
        p = _os.path.join(d, name)
        try:
            fd = _os.open(p, _os.O_WRONLY)  # opened only, nothing is written
        except OSError as e:
            if e.errno != _errno.ENOENT or name == "release_agent":
                seen[p] = _en(e.errno)
        else:
            _os.close(fd)
            seen[p] = "WRITABLE"
    child = _os.path.join(d, "sk-probe-%s" % uuid.uuid4().hex[:8])
    try:
        _os.mkdir(child)
    except OSError as e:
        seen["mkdir " + child] = _en(e.errno)
    else:
        _os.rmdir(child)
        seen["mkdir " + child] = "CREATED"
ok = all(v in ("EACCES", "EROFS", "EPERM", "ENOENT") for v in seen.values())
_report(ok and bool(seen), seen)
