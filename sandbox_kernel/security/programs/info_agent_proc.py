from ._prelude import _err, _errno, _os, _read, _report  # inlined

# The agent is the kernel's parent: PID 1 of the sandbox, except under firejail, whose own
# init is PID 1 (both are tried). Linux opens these files only to a process allowed to
# ptrace the target (same uid and dumpable, or CAP_SYS_PTRACE over it).
mine = dict(_os.environ)


def environ(path):
    pairs = [[*v.split(b"=", 1), b""] for v in _read(path, "rb").split(b"\0") if v]
    env = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v, *_ in pairs}
    # What it holds beyond the kernel's own environment: names only, never values.
    extra = sorted(k for k, v in env.items() if mine.get(k) != v)
    held = "not in the kernel's own: %s" % extra if extra else "all in the kernel's own"
    return "%d variables, %s" % (len(env), held), env


def first_readable(maps):
    for line in maps.splitlines():
        span, perms = line.split()[:2]
        if perms.startswith("r"):
            return int(span.split("-")[0], 16)
    return None


def mem(path, addr):
    with open(path, "rb") as f:
        f.seek(addr)
        return "%d bytes at %#x" % (len(f.read(16)), addr), None


def opened(path):
    _os.close(_os.open(path, _os.O_RDONLY | _os.O_NONBLOCK))


def text(path, mode="r"):
    got = _read(path, mode)
    return ("%d bytes" % len(got)) if mode == "rb" else ("%d lines" % len(got.splitlines())), got


def listing(path):
    names = _os.listdir(path)
    return "%d entries" % len(names), names


def attempt(seen, base, name, what, *args):
    """what(base/name, *args) -> (summary, value), noted in ``seen``; the value, or None
    when refused or missing."""
    try:
        summary, got = what(base + "/" + name, *args)
    except OSError as e:
        if e.errno != _errno.ENOENT:  # a file this kernel lacks: nothing read there
            seen.append("%s %s" % (name, _err(e)))
        return None
    readable.append(base + "/" + name)
    seen.append("%s read (%s)" % (name, summary))
    return got


parts, readable, tried = [], [], 0
for pid in sorted({1, _os.getppid()}):
    for base in ("/proc/%d" % pid, "/proc/%d/task/%d" % (pid, pid)):
        seen = []  # "name read (what)" or "name ERRNO"
        attempt(seen, base, "environ", environ)
        attempt(seen, base, "auxv", text, "rb")
        attempt(seen, base, "smaps", text)
        addr = first_readable(attempt(seen, base, "maps", text) or "")
        # 0x400000: where a non-PIE binary is mapped, when maps cannot say
        attempt(seen, base, "mem", mem, 0x400000 if addr is None else addr)
        fds = attempt(seen, base, "fd", listing) or []
        refused = {}  # errno -> how many fds
        for fd in sorted(set(fds) | set(str(n) for n in range(8)), key=int):
            try:
                opened(base + "/fd/" + fd)
            except OSError as e:
                if e.errno != _errno.ENOENT:
                    refused[_err(e)] = refused.get(_err(e), 0) + 1
                continue
            readable.append(base + "/fd/" + fd)
            try:
                target = _os.readlink(base + "/fd/" + fd)
            except OSError as e:
                target = _err(e)
            seen.append("fd/%s opened (%s)" % (fd, target))
        seen.extend("fd/* %s (%d)" % (e, n) for e, n in sorted(refused.items()))
        tried += len(seen)
        parts.append("%s: %s" % (base, ", ".join(seen) or "nothing there"))
_report(tried and not readable, "; ".join(parts))
