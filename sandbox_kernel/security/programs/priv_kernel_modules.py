from ._prelude import _report  # inlined
from ._syscalls import _judge, _sys  # inlined

results = {
    "init_module": _sys("init_module", None, 0, b""),
    "finit_module": _sys("finit_module", -1, b"", 0),
    "delete_module": _sys("delete_module", b"sk_probe", 0),
}
_report(*_judge(results, {"EPERM", "ENOSYS"}))
