# The helpers every attack program starts with (inlined by the catalogue's loader).
# Names start with "_" to stay out of the way of the user's namespace in a kernel.
import errno as _errno
import json as _json
import os as _os


def _report(blocked, detail):
    print(_json.dumps({"blocked": bool(blocked), "detail": str(detail)}))


def _en(code):
    """An errno value as its name ("EPERM"); None (a timeout) as "timeout"."""
    if code is None:
        return "timeout"
    return _errno.errorcode.get(code, str(code))


def _err(exc):
    """What an exception says, shortly: errno name if it has one, else its type."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _en(exc.errno)
    return type(exc).__name__


def _pids():
    return sorted(int(p) for p in _os.listdir("/proc") if p.isdigit())


def _read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()
