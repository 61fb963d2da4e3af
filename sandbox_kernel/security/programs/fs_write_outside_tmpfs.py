import sysconfig
import uuid

from ._prelude import _en, _errno, _os, _report  # inlined

tag = uuid.uuid4().hex
paths = sysconfig.get_paths()
DIRS = [
    "/",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/etc",
    "/var",
    "/var/tmp",
    "/var/lib",
    "/var/cache",
    "/opt",
    "/root",
    "/run",
    "/srv",
    "/mnt",
    "/bin",
    "/sbin",
    "/boot",
    "/media",
    paths["purelib"],
    paths["stdlib"],
]
EXPECTED = {"EACCES", "EROFS", "EPERM"}
results = {}
for d in DIRS:
    p = _os.path.join(d, ".sk-write-%s" % tag)
    try:
        fd = _os.open(p, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL, 0o644)
    except OSError as e:
        if e.errno not in (_errno.ENOENT, _errno.ENOTDIR):
            results["create in " + d] = _en(e.errno)
    else:
        _os.close(fd)
        _os.unlink(p)
        results["create in " + d] = "WRITTEN"
    try:
        _os.mkdir(p + "-dir")
    except OSError as e:
        if e.errno not in (_errno.ENOENT, _errno.ENOTDIR):
            results["mkdir in " + d] = _en(e.errno)
    else:
        _os.rmdir(p + "-dir")
        results["mkdir in " + d] = "CREATED"
for p in (
    "/etc/passwd",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
    _os.path.realpath("/usr/bin/python3"),
    "/bin/sh",
):
    if not _os.path.exists(p):
        continue
    try:
        fd = _os.open(p, _os.O_WRONLY | _os.O_APPEND)  # writes nothing
    except OSError as e:
        results["open " + p] = _en(e.errno)
    else:
        _os.close(fd)
        results["open " + p] = "WRITABLE"
    try:
        _os.utime(p, None)
        results["utime " + p] = "CHANGED"
    except OSError as e:
        results["utime " + p] = _en(e.errno)
bad = {k: v for k, v in results.items() if v not in EXPECTED}
if bad:
    _report(False, "not refused as expected: %s" % bad)
else:
    _report(bool(results), "%d writes refused (%s)" % (len(results), sorted(set(results.values()))))
