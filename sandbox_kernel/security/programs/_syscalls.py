# Raw syscalls and libc calls by name, judged by errno (inlined by the loader).
import ctypes as _ctypes
import platform as _platform

from ._prelude import _en  # inlined

_libc = _ctypes.CDLL(None, use_errno=True)
# fmt: off
_NR = {
    "x86_64": {
        "ptrace": 101, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165,
        "umount2": 166, "swapon": 167, "reboot": 169, "sethostname": 170, "iopl": 172,
        "ioperm": 173, "init_module": 175, "delete_module": 176, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "setns": 308, "process_vm_readv": 310, "finit_module": 313, "bpf": 321,
        "userfaultfd": 323, "io_uring_setup": 425, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsmount": 432, "fspick": 433,
    },
    "aarch64": {
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "acct": 89,
        "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "ptrace": 117, "reboot": 142, "sethostname": 161, "add_key": 217,
        "request_key": 218, "keyctl": 219, "swapon": 224, "perf_event_open": 241,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
        "process_vm_readv": 270, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsmount": 432, "fspick": 433,
    },
}.get(_platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64"), {})
# fmt: on


def _arg(a):
    return _ctypes.c_long(a) if isinstance(a, int) else a


def _sys(name, *args):
    """A raw syscall: its errno name ("EPERM"), or "OK" when it succeeded (then the
    return value is in _sys.last); None when the syscall is unknown on this machine."""
    nr = _NR.get(name)
    if nr is None:
        return None
    fn = _libc.syscall
    fn.restype = _ctypes.c_long
    _ctypes.set_errno(0)
    rv = fn(_ctypes.c_long(nr), *[_arg(a) for a in args])
    _sys.last = rv
    return _en(_ctypes.get_errno()) if rv == -1 else "OK"


def _call(name, *args):
    """A libc function, like _sys."""
    fn = getattr(_libc, name)
    _ctypes.set_errno(0)
    rv = fn(*[_arg(a) for a in args])
    _call.last = rv
    return _en(_ctypes.get_errno()) if rv == -1 else "OK"


def _judge(results, expected):
    """results: {what: errno name or "OK" or None}. Blocked when every attempt that
    could be made failed with an expected errno."""
    tried = {k: v for k, v in results.items() if v is not None}
    ok = bool(tried) and all(v in expected for v in tried.values())
    return ok, ", ".join("%s: %s" % (k, v) for k, v in sorted(tried.items())) or "nothing tried"
