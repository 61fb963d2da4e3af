from ._prelude import _en, _os, _report  # inlined

PATHS = [
    "/proc/sysrq-trigger",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe",
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/panic",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/fs/binfmt_misc/register",
    "/sys/kernel/uevent_helper",
    "/sys/power/state",
    "/sys/kernel/mm/ksm/run",
]
seen = {}
for p in PATHS:
    try:
        fd = _os.open(p, _os.O_WRONLY)  # opened only, nothing is written
    except OSError as e:
        seen[p] = _en(e.errno)
    else:
        _os.close(fd)
        seen[p] = "WRITABLE"
_report(all(v in ("EACCES", "EROFS", "EPERM", "ENOENT") for v in seen.values()), seen)
