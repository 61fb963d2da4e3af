from ._ns_child import _new_ns_in_child  # inlined
from ._prelude import _report  # inlined

CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
seen = {
    "unshare(CLONE_NEWUSER)": _new_ns_in_child(CLONE_NEWUSER),
    "unshare(CLONE_NEWUSER|CLONE_NEWNS)": _new_ns_in_child(CLONE_NEWUSER | CLONE_NEWNS),
    "clone(CLONE_NEWUSER)": _new_ns_in_child(CLONE_NEWUSER, "clone"),
}
ok = all(v in ("EPERM", "EINVAL", "ENOSPC", "EACCES", "ENOSYS", "OK-NOOP") for v in seen.values())
_report(ok, seen)
