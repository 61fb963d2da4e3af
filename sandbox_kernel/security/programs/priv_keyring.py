from ._prelude import _report  # inlined
from ._syscalls import _ctypes, _judge, _sys  # inlined

SESSION, USER, USER_SESSION = -3, -4, -5
KEYCTL_GET_KEYRING_ID, KEYCTL_READ = 0, 11
buf = _ctypes.create_string_buffer(4096)
results = {
    "add_key(user)": _sys("add_key", b"user", b"sk-probe", b"x", 1, SESSION),
    "add_key(keyring)": _sys("add_key", b"keyring", b"sk-probe", None, 0, SESSION),
    "request_key": _sys("request_key", b"user", b"sk-probe", None, 0),
}
for name, ring in (("session", SESSION), ("user", USER), ("user-session", USER_SESSION)):
    got = _sys("keyctl", KEYCTL_READ, ring, buf, 4096)
    if got == "OK" and _sys.last == 0:
        got = "EMPTY"  # an empty keyring: nothing to read, nothing leaked
    results["read %s keyring" % name] = got
ok, detail = _judge(results, {"ENOSYS", "EPERM", "EACCES", "ENOKEY", "EMPTY"})
ring = _sys("keyctl", KEYCTL_GET_KEYRING_ID, SESSION, 0)
_report(ok, "%s (session keyring id: %s)" % (detail, _sys.last if ring == "OK" else ring))
