import stat

from ._prelude import _err, _errno, _os, _report  # inlined

agent = _os.getppid()  # the kernel's parent: the agent
results = {}
fds = set(str(fd) for fd in range(16))  # also those a listing might not show
try:
    fds.update(_os.listdir("/proc/%d/fd" % agent))
except OSError as e:
    results["list /proc/%d/fd" % agent] = _err(e)
for fd in sorted(fds, key=int):
    for name, flags in (("write", _os.O_WRONLY), ("read", _os.O_RDONLY)):
        path = "/proc/%d/fd/%s" % (agent, fd)
        try:
            opened = _os.open(path, flags | _os.O_NONBLOCK)
        except OSError as e:
            if e.errno != _errno.ENOENT:
                results["%s %s" % (name, path)] = _err(e)
            continue
        mode = _os.fstat(opened).st_mode
        _os.close(opened)
        # /dev/null (the agent's 0-2) is open to anyone anyway; a pipe, socket or
        # file is what must stay out of reach.
        results["%s %s" % (name, path)] = "device" if stat.S_ISCHR(mode) else "OK"
opened = sorted(k for k, v in results.items() if v == "OK")
_report(not opened, "opened: %s" % opened if opened else results)
