# Run by _new_ns_in_child (programs/_ns_child.py) as `python -I -S -c`, with the clone flags
# and "unshare" or "clone" as arguments; prints the result.
import ast
import ctypes
import errno
import os
import platform
import sys


def view():
    out = {}
    # Not "user": gVisor shows each process its own user-namespace inode; a new user
    # namespace shows as capabilities gained in it.
    for name in ("mnt", "net", "pid", "pid_for_children", "uts", "ipc", "cgroup"):
        try:
            out[name] = os.readlink("/proc/self/ns/" + name)
        except OSError:
            out[name] = None
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("Cap"):
            out[line.split(":")[0]] = line.split(":")[1].strip()
    try:
        out["cgroups"] = open("/proc/self/cgroup").read()
    except OSError:
        pass
    return out


def errname():
    return errno.errorcode.get(ctypes.get_errno(), "?")


flags, how = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
before = view()
if how == "unshare":
    if libc.unshare(flags) == -1:
        print(errname())
        sys.exit()
    after = view()
else:
    nr = {"x86_64": 56, "amd64": 56, "aarch64": 220, "arm64": 220}.get(platform.machine().lower())
    if nr is None:
        print("ENOSYS")  # clone() number unknown here: nothing was tried
        sys.exit()
    r, w = os.pipe()
    SIGCHLD = 17
    pid = libc.syscall(ctypes.c_long(nr), ctypes.c_long(flags | SIGCHLD), None, None, None, None)
    if pid == 0:  # the clone: report what it sees, and leave at once
        try:
            seen = view()
        except Exception as e:
            seen = {"error in the clone": repr(e)}
        os.write(w, repr(seen).encode())
        os._exit(0)
    if pid == -1:
        print(errname())
        sys.exit()
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    after = ast.literal_eval(data.decode())
changed = sorted(k for k in after if after[k] != before.get(k))
if changed:
    print("OK (changed: %s; CapEff %s)" % (", ".join(changed), after.get("CapEff")))
else:
    print("OK-NOOP")
