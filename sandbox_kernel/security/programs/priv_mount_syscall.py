import tempfile

from ._prelude import _os, _report  # inlined
from ._syscalls import _call, _judge, _sys  # inlined

target = tempfile.mkdtemp(prefix=".sk-mnt-", dir="/tmp").encode()
MS_REMOUNT, MS_BIND, MNT_DETACH = 32, 4096, 2
AT_FDCWD, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 1, 4
try:
    results = {
        "mount tmpfs": _call("mount", b"none", target, b"tmpfs", 0, None),
        "bind /": _call("mount", b"/", target, None, MS_BIND, None),
        "remount / rw": _call("mount", None, b"/", None, MS_REMOUNT, None),
        "umount2 a directory": _call("umount2", target, MNT_DETACH),
    }
    # The new mount API: a filesystem context, a clone of /, then attaching one.
    for name, args in (
        ("fsopen tmpfs", (b"tmpfs", 0)),
        ("fspick /", (AT_FDCWD, b"/", 0)),
        ("open_tree clone /", (AT_FDCWD, b"/", OPEN_TREE_CLONE)),
    ):
        results[name] = _sys(name.split()[0], *args)
        if results[name] == "OK":
            fd = _sys.last
            results["move_mount of " + name] = _sys(
                "move_mount", fd, b"", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH
            )
            _os.close(fd)
    results["move_mount of nothing"] = _sys(
        "move_mount", -1, b"", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH
    )
finally:
    for _ in [v for k, v in results.items() if k.startswith("move_mount") and v == "OK"]:
        _call("umount2", target, MNT_DETACH)
    _os.rmdir(target)
_report(*_judge(results, {"EPERM", "EACCES", "ENOSYS"}))
